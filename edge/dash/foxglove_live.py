"""Optional live Foxglove server (`edge-dash --foxglove-port N`, extra `foxglove`).

Republishes what the dashboard receives on Foxglove's WebSocket protocol through the official
`foxglove-sdk`, on the same JSON channels (and schemas, `edge.schemas`) a recording's view
channels use, so one Foxglove layout works live and on recorded drives. The SDK's server keeps
a bounded backlog per client and drops for slow ones; `log` never blocks the dashboard.
"""

from __future__ import annotations

import time
from typing import Any

from edge import schemas

CHANNELS: dict[str, tuple[str, str]] = {
    # telemetry kind -> (topic, schema name)
    "estimate": ("/estimate", "emotion_edge.Estimate"),
    "status": ("/status", "emotion_edge.Status"),
}


class FoxgloveLive:
    def __init__(self, *, host: str, port: int, backlog: int) -> None:
        try:
            import foxglove  # the extra: imported only when asked for
        except ImportError as exc:
            raise RuntimeError(
                "--foxglove-port needs the `foxglove` extra: pip install -e '.[foxglove]'"
            ) from exc

        self._context = foxglove.Context()
        self._server = foxglove.start_server(
            name="emotion-edge",
            host=host,
            port=port,
            context=self._context,
            message_backlog_size=backlog,
        )
        self._channels: dict[str, Any] = {
            kind: foxglove.Channel(
                topic,
                schema=foxglove.Schema(
                    name=name,
                    encoding=schemas.SCHEMA_ENCODING,
                    data=schemas.schema_data(name),
                ),
                message_encoding=schemas.MESSAGE_ENCODING,
                context=self._context,
            )
            for kind, (topic, name) in CHANNELS.items()
        }

    @property
    def port(self) -> int:
        return int(self._server.port)

    def log(self, kind: str, encoded_json: str) -> None:
        # Live, Foxglove's timeline is wall time; the window stamps stay in the message.
        self._channels[kind].log(encoded_json.encode(), log_time=time.time_ns())

    def close(self) -> None:
        self._server.stop()
