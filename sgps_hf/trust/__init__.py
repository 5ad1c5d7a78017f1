"""Checking a synthesized classifier before trusting it.

- :mod:`.own_cases`: evaluation on the user's own labelled cases (accuracy, balanced accuracy, per-class
  sensitivity / specificity / PPV with intervals, AUROC, ECE, confusion matrix); :mod:`.report` writes it.
- :mod:`.subgroup_audit`: per-subgroup accuracy and calibration from metadata columns.
- :mod:`.conformal`: split-conformal prediction sets with a coverage guarantee.
- :mod:`.explain`: Grad-CAM saliency maps on the plain timm model.
- :mod:`.advice`: warnings where accuracy will be poor; :mod:`.batch`: many images, one row each (bad files as
  error rows). The segmenter side (it needs the segmentation models) is :mod:`sgps_hf.evaluation.seg_own_cases`.

It sits between ``hub`` and ``models`` in the package's layers: the classifier's methods delegate here.
"""
