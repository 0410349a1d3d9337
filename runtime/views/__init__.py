"""What a user sees of a run, derived from the store alone: the CLI and the service share it.

Rooms: `_status` (`status`: the run record plus what its journal says).
"""

from ._status import describe

__all__ = ["describe"]
