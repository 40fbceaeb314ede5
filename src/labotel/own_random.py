"""labotel's own random numbers.

Drawing from the ``random`` module's generator would change the numbers an application
that seeds it gets. Like that generator, this one is reseeded in a forked child: else
parent and child would draw the same numbers (the same trace ids).
"""

from __future__ import annotations

import os
import random

generator = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=generator.seed)
