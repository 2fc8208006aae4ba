"""Rule-based tasks in numpy and PIL: environments, verifiers, prompts and expert data. No JAX here.

`tasks.general_points` is the 24-points card game (GP-L text, GP-VL image); `tasks.virl` is street navigation
(V-IRL-L text, V-IRL-VL rendered views). Both share the types of `tasks.common`.
"""

from tasks.common import Message, Transition, Verdict, parse_json_object

__all__ = ["Message", "Transition", "Verdict", "parse_json_object"]
