"""The annotation palettes of the data sets: DAVIS (PASCAL-VOC's colour map) and YouTube-VOS.

YouTube-VOS: entries 0..10 are those of the released annotations (0,0,0), (236,95,103), (249,145,87),
(250,200,99), (153,199,148), (98,179,178), (102,153,204), (197,148,197), (171,121,103), (255,255,255),
(101,115,126), as reproduced in XMem's `util/palette.py`; that copy continues with entries 11..15 = (i,i,i),
and we assume the grey ramp (i,i,i) holds up to 255.
"""
from __future__ import annotations


def voc_palette() -> bytes:
    """The PASCAL-VOC colour map (DAVIS annotations): 256 RGB triples from the bits of each index."""
    pal = bytearray()
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += bytes((r, g, b))
    return bytes(pal)


def ytvos_palette() -> bytes:
    """The YouTube-VOS annotation palette (module docstring): 11 colours, then the grey ramp (i, i, i)."""
    head = [(0, 0, 0), (236, 95, 103), (249, 145, 87), (250, 200, 99), (153, 199, 148), (98, 179, 178),
            (102, 153, 204), (197, 148, 197), (171, 121, 103), (255, 255, 255), (101, 115, 126)]
    return bytes(v for rgb in head for v in rgb) + bytes(v for i in range(len(head), 256) for v in (i, i, i))


DAVIS_PALETTE = voc_palette()
YTVOS_PALETTE = ytvos_palette()
