"""The product's gclasses. Importing this package registers every gclass by name."""

from gclasses import c_tcp_s, c_timer, c_yuno  # noqa: F401  (registration on import)
