"""How probabilities are stored: uint8 codes ``round(p * SCALE)``, with ``NODATA`` where a pixel has no data.

One byte per species and pixel keeps Europe at 50 m with 10,000 species in tens of terabytes; 254 steps resolve a
probability to 0.4 %, finer than any model here is calibrated.
"""

NODATA = 255
SCALE = 254
