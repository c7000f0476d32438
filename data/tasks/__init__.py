"""Synthetic tasks generated deterministically from a seed (one module per task family).

The registered tasks, imported here so that each registry is complete whichever module is
imported first (each task module imports only its registry's module):

  exact_match.py   countdown3/4 (countdown.py), infill (infilling.py), sudoku4/9 (sudoku.py),
                   star2/3 (stargraph.py)
  reasoning.py     modsum, multiplication, parity (parity_cot.py), prontoqa, prosqa
  state_tracking.py  group word problems (its own generator table)
  attributes.py    labels of answers (e.g. a progression's step parity) for guided decoding
"""

from data.tasks import exact_match
from data.tasks import reasoning
from data.tasks import countdown  # pylint: disable=g-bad-import-order
from data.tasks import infilling
from data.tasks import modsum
from data.tasks import multiplication
from data.tasks import parity_cot
from data.tasks import prontoqa
from data.tasks import prosqa
from data.tasks import stargraph
from data.tasks import sudoku
from data.tasks import attributes
