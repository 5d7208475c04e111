"""The product's gclasses. Importing this package registers every gclass by name."""

from gclasses import (  # noqa: F401  (registration on import)
    c_agent,
    c_ievent_cli,
    c_ievent_srv,
    c_metrics,
    c_tcp_s,
    c_timer,
    c_udp_s,
    c_yuno,
)
