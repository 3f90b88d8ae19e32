"""Global settings (``st.config``), as ``keras.config``: the image data format that
Conv2D and the pooling layers use when they are not given one."""

from __future__ import annotations

_DATA_FORMATS = ("channels_first", "channels_last")
# channels-first: the seed's layout, (N, C, H, W), which the kernels compute on.
_image_data_format = "channels_first"


def image_data_format() -> str:
    """The default ``data_format`` of image layers: "channels_first" or "channels_last"."""
    return _image_data_format


def set_image_data_format(data_format: str) -> None:
    """Sets the default ``data_format`` of image layers constructed from now on."""
    global _image_data_format
    _image_data_format = standardize_data_format(data_format, owner="set_image_data_format")


def standardize_data_format(data_format: "str | None", owner: str = "data_format") -> str:
    """``data_format``, or the global default when it is None; a ValueError otherwise."""
    if data_format is None:
        return _image_data_format
    if not isinstance(data_format, str) or data_format.lower() not in _DATA_FORMATS:
        raise ValueError(f"[{owner}] data_format must be 'channels_first' or 'channels_last', "
                         f"got {data_format!r}")
    return data_format.lower()


__all__ = ["image_data_format", "set_image_data_format"]
