"""Text from the user (layer, blob and net names) placed in generated C comments."""

from __future__ import annotations

import re

# Characters a comment must not carry through: control characters (a
# newline would end a line comment or split a preprocessor line) and the
# comment delimiters themselves.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def comment_text(text: str) -> str:
    """Return ``text`` safe inside a C or CUDA ``/* ... */`` comment.

    "*/" would end the comment and let the rest of a name compile as code,
    and "/*" inside a comment draws -Wcomment. Both lose their meaning by a
    space between the two characters; control characters become "?".
    """
    text = _CONTROL.sub("?", str(text))
    return text.replace("*/", "* /").replace("/*", "/ *")
