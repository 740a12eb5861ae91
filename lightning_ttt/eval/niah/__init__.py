"""RULER's single-needle "needle in a haystack" tasks (S-NIAH-1/2/3), as the paper's Table 2 uses them.

``templates`` (every prompt string), ``haystack`` (noise and essay text), ``prompts`` (tasks and
samples in token ids), ``scoring`` (answerers, string_match_all), ``report`` (intervals, window
split, files, figures), ``run`` (typed entry points), ``cli`` (``ttt niah``).
"""
