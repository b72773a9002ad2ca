"""After-training tools: evaluate and predict, report, embed, explain, export, compare.

The package exports the commands that need no plotting library; the plotting tools are imported
from their modules (`crckd.tools.report.write_report`, `crckd.tools.embed.embed_run`, ...).
"""

from crckd.tools.evaluate import evaluate_checkpoint, predict_paths
from crckd.tools.export import export_student, load_exported

__all__ = ["evaluate_checkpoint", "export_student", "load_exported", "predict_paths"]
