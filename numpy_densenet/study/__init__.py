"""The study tools: how gradient flows back through a DenseNet's concatenations, and what each layer reuses.

* :mod:`.flow` - gradient-flow matrices (the gradient each feature map receives from each consumer) and
  feature-reuse matrices (the paper's Figure 5), recorded from outside the blocks;
* :mod:`.explain` - one small dense block narrated step by step (``numpy-densenet explain``);
* :mod:`.heatmap` - the matrices as heatmaps (matplotlib);
* :mod:`.summary` - a per-layer table of a model (``numpy-densenet summary``).
"""
from .explain import explain_block
from .flow import (BlockMatrix, FlowReport, block_feature_reuse, block_gradient_flow, feature_reuse, gradient_flow,
                   record_backward_inputs, record_backward_outputs)
from .heatmap import have_matplotlib, heatmap_range, save_heatmap
from .summary import format_summary, summary_rows

__all__ = ["BlockMatrix", "FlowReport", "gradient_flow", "block_gradient_flow", "block_feature_reuse",
           "feature_reuse", "record_backward_inputs", "record_backward_outputs", "explain_block", "save_heatmap",
           "heatmap_range", "have_matplotlib", "format_summary", "summary_rows"]
