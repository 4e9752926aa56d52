"""``RunStatus`` with the members and values of fedml 0.9.6."""

from enum import Enum, unique


@unique
class RunStatus(Enum):
    NOT_STARTED = "NOT_STARTED"
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    KILLED = "KILLED"
    FAILED = "FAILED"
    FINISHED = "FINISHED"
    ABANDONED = "ABANDONED"
    LAUNCHED = "LAUNCHED"
    ERROR = "ERROR"
    BLOCKED = "BLOCKED"
    PRE_QUEUE = "PRE_QUEUE"
    INVALID = "INVALID"
    CLUSTER_QUEUE = "CLUSTER_QUEUE"
    PROVISIONING = "PROVISIONING"
    UNDETERMINED = "UNDETERMINED"

    def __str__(self) -> str:
        return self.value
