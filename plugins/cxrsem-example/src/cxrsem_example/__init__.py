"""cxrsem-example: a template third-party plugin for cxrsem.

It registers, through cxrsem's ordinary hooks (see :mod:`cxrsem_example.plugin`):

- dataset ``csv-folder`` -- any image folder with a ``labels.csv`` (:mod:`cxrsem_example.csv_folder`);
- concept set ``mask-folder`` -- images plus one binary mask folder per concept
  (:mod:`cxrsem_example.mask_folder`);
- loss ``focal`` -- sigmoid focal loss (:mod:`cxrsem_example.focal`);
- architecture ``resnet50`` -- torchvision's ResNet-50 (:mod:`cxrsem_example.resnet`).

Nothing here is imported by cxrsem itself: cxrsem finds the package through the ``cxrsem``
entry-point group declared in its ``pyproject.toml``.
"""

__version__ = "0.1.0"
