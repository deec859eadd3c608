"""Channel names: what a client follows.

    inventory:{region}                 every stock change of the region
    inventory:{region}:{product_id}    stock changes of one product in the region (all its warehouses)

A node started with ``--region eu`` serves the channels of region ``eu`` only. Every channel of a
region is a view of one broker stream, ``inventory.{region}``, so one position (cursor) is valid for
all of them: a client that follows a region and a product resumes both from the same position.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

_REGION = re.compile(r"[a-z0-9][a-z0-9\-]{0,31}")
MAX_CHANNEL_LENGTH = 128


class ChannelError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Channel:
    region: str
    product_id: str | None = None
    # Made once: a fan-out reads it once per delivery (and a new string is hashed anew by each lookup).
    name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = f"inventory:{self.region}"
        if self.product_id is not None:
            name += f":{self.product_id}"
        object.__setattr__(self, "name", name)

    @property
    def stream(self) -> str:
        return inventory_stream(self.region)

    def matches(self, product_id: str) -> bool:
        return self.product_id is None or self.product_id == product_id

    def __str__(self) -> str:
        return self.name


def inventory_stream(region: str) -> str:
    return f"inventory.{region}"


def parse_channel(name: str) -> Channel:
    if len(name) > MAX_CHANNEL_LENGTH:
        raise ChannelError("invalid_channel", "channel names are at most 128 characters")
    parts = name.split(":")
    if parts[0] != "inventory" or len(parts) not in (2, 3):
        raise ChannelError(
            "invalid_channel", "a channel is inventory:{region} or inventory:{region}:{product_id}"
        )
    region = parts[1]
    if not _REGION.fullmatch(region):
        raise ChannelError("invalid_channel", f"{region!r} is not a region name")
    if len(parts) == 2:
        return Channel(region)
    try:
        product_id = str(uuid.UUID(parts[2]))
    except ValueError as exc:
        raise ChannelError("invalid_channel", "the product of a channel is a UUID") from exc
    return Channel(region, product_id)
