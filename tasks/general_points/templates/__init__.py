"""Packaged prompt templates of GeneralPoints (text files, `string.Template` syntax). Override any of them with
`GeneralPointsConfig(prompt_template=PATH, feedback_template=PATH)`; see docs/general_points.md."""
