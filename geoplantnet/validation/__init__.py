"""Validation: spatial block cross-validation (:mod:`blocks`), metrics (:mod:`metrics`), side-by-side reports
(:mod:`report`)."""
