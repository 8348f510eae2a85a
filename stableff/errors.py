"""The one exception type a user can cause; the CLI turns it into a single message and exit 1."""


class StableFFError(Exception):
    """A problem with the user's input (file, frame, configuration) described in one sentence."""


class DataError(StableFFError):
    """Bad input data: names the file, the frame (0-based) and the problem."""

    def __init__(self, path, problem: str, frame: int | None = None):
        where = f"{path}" if frame is None else f"{path}, frame {frame}"
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.frame = frame
        self.problem = problem

    def __reduce__(self):
        # raised in a worker process, it travels back pickled: rebuilt from its own arguments
        # (the default would call __init__ with the message alone and fail, which leaves
        # multiprocessing's result thread dead and the parent waiting for ever)
        return (type(self), (self.path, self.problem, self.frame))


class ConfigError(StableFFError):
    """Bad configuration: names the key and what is wrong with it."""
