"""Online learning of the per-user weights w_u, inside the server."""

from veloxserve.learning.states import UserStates
from veloxserve.learning.user_table import UserTable

__all__ = ["UserStates", "UserTable"]
