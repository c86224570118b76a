"""Learn by deriving: an exercise notebook for every family, graded step by step.

``backprop-suite learn NAME`` writes a notebook whose backward has one ``blank`` per step
of the derivation; its last cell, ``grade(NAME, forward, backward)``, judges each step
with ``suite.check_steps`` and points the first wrong one back to its derivation in
manual/ (suite/learn/hints.py). ``backprop-suite grade FILE.ipynb`` runs the notebook in
a fresh kernel and does the same. The catalog: suite/learn/exercises/, one module each.
"""

from suite.learn import exercises
from suite.learn.grading import Grade, blank, grade
from suite.learn.second_order import grade_omega

__all__ = ["blank", "grade", "grade_omega", "Grade", "exercises"]
