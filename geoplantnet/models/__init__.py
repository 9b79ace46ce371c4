"""Models: the multimodal species network (:mod:`species_net`), its losses (:mod:`losses`), and peers."""
