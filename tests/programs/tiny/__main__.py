"""Engine smoke-test program: one dynamic resource whose content comes from stack config."""

import pulumi
from tiny_file import TinyFile

config = pulumi.Config()
f = TinyFile("greeting", path=config.require("path"), content=config.require("content"))
pulumi.export("path", f.path)
pulumi.export("content", f.content)
