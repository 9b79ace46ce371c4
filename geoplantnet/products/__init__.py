"""Products made from the maps: habitat maps (indicators, change maps and impact scenarios to come)."""
