"""The words a run-against-run comparison judges with, shared by compare (tables) and plots (charts)."""

from __future__ import annotations

BETTER, WORSE, UNCHANGED, NOT_JUDGED = "better", "worse", "unchanged", "not judged"
SPEED_WORDS = {BETTER: "faster", WORSE: "slower", UNCHANGED: "unchanged", NOT_JUDGED: "not judged"}
VERDICT_COLOURS = {BETTER: "#2d6a4f", WORSE: "#b00020", UNCHANGED: "#6c757d", NOT_JUDGED: "#adb5bd"}
