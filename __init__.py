"""wan-animate as an inference.sh app package: the platform imports the app's classes from here.

Cheap to import (pydantic models only): torch and the models load in `App.setup`.
"""

from .inference import App, AppInput, AppOutput, AppSetup

__all__ = ["App", "AppInput", "AppOutput", "AppSetup"]
