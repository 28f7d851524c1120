"""The Triton model-repository templates, one folder per promotion.flavour.

Installed as the data package adore.serving.templates (pyproject.toml maps this
folder there), so adore.serving.repository finds them with importlib.resources in
an editable install and in a wheel alike. Nothing here is imported for code.
"""
