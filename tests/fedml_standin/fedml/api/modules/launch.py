"""``LaunchResult`` with the fields of fedml 0.9.6."""

from typing import Any, Optional


class LaunchResult:
    def __init__(
        self,
        result_code: int,
        result_message: str,
        run_id: Optional[str] = None,
        project_id: Optional[str] = None,
        inner_id: Optional[str] = None,
        result_object: Any = None,
    ) -> None:
        self.run_id = run_id
        self.project_id = project_id
        self.inner_id = inner_id
        self.result_code = result_code
        self.result_message = result_message
        self.result_object = result_object
