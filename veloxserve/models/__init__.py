"""Pure model computation: catalogues, feature models f(x; θ), model versions. No I/O here."""

from veloxserve.models.catalog import ItemCatalog
from veloxserve.models.features import MatrixFactorizationFeatures
from veloxserve.models.version import Link, ModelVersion, UserPrior

__all__ = ["ItemCatalog", "Link", "MatrixFactorizationFeatures", "ModelVersion", "UserPrior"]
