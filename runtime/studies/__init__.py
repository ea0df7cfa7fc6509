"""The studies wing: what is built on top of training and evaluation.

- `paper`: Park & Kim 2023's published accuracies, the numbers dagc is compared with;
- `reproduce`: `dagc reproduce`, the paper's Table 1 and Fig. 3 as a resumable campaign;
- `lesion`: `dagc lesion`, test accuracy with chosen neurons silenced;
- `analysis`: `dagc analyze`, which runs the lesion `scan`, the `statistics`, the `plots`
  and the `report` (ANALYSIS.md).

Studies import the training core (`dagc.runtime.*`) and never the other way round.
"""
