"""What every `kernel-gateway-ext` command shares: configuration found the Jupyter way, and logs.

Configuration, lowest first: trait defaults < ``KGE_*`` env vars < the config file < the command
line. The config file is ``kernel_gateway_ext_config.py`` wherever Jupyter apps look for theirs
(``jupyter --paths``: ``~/.jupyter``, ``/etc/jupyter``, …) or the file named by ``--config`` /
``KGE_CONFIG``; ``--generate-config`` writes a commented one (as ``jupyter kernelgateway`` does).
Every subcommand (``keys``, ``build-images``) reads the same file and env vars as the gateway.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from collections.abc import Generator

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from tornado.log import LogFormatter
from traitlets import Bool, Enum, Unicode, default, observe
from traitlets.config import Application, Configurable

from .config import apply_env, env

CONFIG_FILE_NAME = "kernel_gateway_ext_config"
# jupyter_server's access and application log line: [I 2026-12-02 05:09:13.120 Gateway] message
JUPYTER_LOG_FORMAT = "%(color)s[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s]%(end_color)s %(message)s"
JUPYTER_DATEFMT = "%Y-%m-%d %H:%M:%S"
# Fields of a record that are logging's own, not extra context worth a JSON key.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color", "end_color"}

common_aliases = {**base_aliases, "config": "GatewayApplication.config_file", "log-level": "GatewayApplication.log_level"}
common_flags = {
    **base_flags,
    "debug": ({"GatewayApplication": {"log_level": logging.DEBUG}}, "Log debug messages."),
    "json-logs": ({"GatewayApplication": {"log_json": True}}, "Log JSON lines instead of text."),
}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class GatewayApplication(JupyterApp):
    """Base of the gateway and its subcommands."""

    log_level = Enum(
        (0, 10, 20, 30, 40, 50, "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"),
        default_value="INFO",
        help="Log level: DEBUG, INFO, WARN, ERROR or CRITICAL (or 10-50).",
    ).tag(config=True)
    log_format = Unicode(JUPYTER_LOG_FORMAT, help="Log line format (text logs), jupyter_server's.").tag(config=True)
    log_datefmt = Unicode(JUPYTER_DATEFMT, help="Date format of log lines (text logs).").tag(config=True)
    log_json = env(Bool(False, help="Log JSON lines (time, level, logger, message, context) instead of text."),
                   "KGE_LOG_JSON")
    config_file = Unicode(
        help=f"A config file to load instead of {CONFIG_FILE_NAME}.py from the Jupyter config paths. [env: KGE_CONFIG]"
    ).tag(config=True)
    _log_formatter_cls = LogFormatter  # type: ignore[assignment]  # jupyter_server's: colours on a terminal only

    @default("config_file")
    def _config_file_default(self) -> str:
        return os.environ.get("KGE_CONFIG", "")

    @default("config_file_name")
    def _config_file_name_default(self) -> str:
        return CONFIG_FILE_NAME  # one file for the gateway and every subcommand

    def _classes_inc_parents(self, classes: Any = None) -> Generator[type[Configurable], None, None]:
        # traitlets' Application section would list log_level etc. with its own defaults (WARN), not the
        # ones in effect: this class redefines each of them.
        for cls in super()._classes_inc_parents(classes):
            if cls is not Application:
                yield cls

    def initialize(self, argv: Any = None) -> None:
        super().initialize(argv)  # the command line, the Jupyter config paths, the file; the command line wins
        if self._dispatching:
            return
        apply_env(self)
        self._use_json_logs()

    def migrate_config(self) -> None:
        """JupyterApp would copy an IPython 3 profile into ~/.jupyter: a service has none to migrate."""

    @observe("log_json")
    def _log_json_changed(self, change: Any) -> None:
        self._use_json_logs()

    def _use_json_logs(self) -> None:
        """Send this app's logs and Tornado's (access, general) through one handler and format."""
        handlers = list(self.log.handlers) if isinstance(self.log, logging.Logger) else []
        if not handlers:
            return
        if self.log_json:
            for h in handlers:
                h.setFormatter(JsonLogFormatter())
        for name in ("tornado.access", "tornado.application", "tornado.general"):
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = False
            logger.setLevel(self.log.level)
