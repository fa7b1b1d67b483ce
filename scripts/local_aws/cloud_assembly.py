"""Reading a synthesized cloud assembly (cdk.out) and resolving CloudFormation intrinsics to concrete values."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NO_VALUE = object()
REPO_ROOT = Path(__file__).resolve().parents[2]


class Synthesis:
    """`python app.py` with CDK_OUTDIR (the synthesis `cdk synth` runs), started in the background: a caller can
    load its own modules meanwhile and `wait()` for the assembly (this module imports nothing heavy)."""

    def __init__(self, outdir: Path, config_path: Path | None = None) -> None:
        env = {**os.environ, "CDK_OUTDIR": str(outdir), "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
        if config_path is not None:
            env["REFIT_CONFIG"] = str(Path(config_path).resolve())  # synthesis runs in the repository, not here
        self.outdir = outdir
        self.process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "app.py")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )

    def wait(self) -> Path:
        """The assembly directory, once synthesis succeeded; its stderr's end otherwise."""
        _, stderr = self.process.communicate()
        if self.process.returncode != 0:
            raise RuntimeError(f"synthesis failed:\n{stderr[-4000:]}")
        return self.outdir


def synthesize(outdir: Path, config_path: Path | None = None) -> Path:
    """`python app.py` with CDK_OUTDIR: the same synthesis `cdk synth` runs."""
    return Synthesis(outdir, config_path).wait()


@dataclass
class CloudAssembly:
    directory: Path
    stack_name: str
    template: dict[str, Any]
    assets: dict[str, Any]

    @classmethod
    def load(cls, directory: str | Path, stack_name: str | None = None) -> CloudAssembly:
        """`stack_name` defaults to the assembly's one stack (named after the configuration's project)."""
        directory = Path(directory)
        if stack_name is None:
            manifest = directory / "manifest.json"
            if not manifest.exists():
                raise FileNotFoundError(f"{manifest}: no cloud assembly; run `python app.py` with CDK_OUTDIR")
            artifacts = json.loads(manifest.read_text()).get("artifacts", {})
            stacks = sorted(k for k, v in artifacts.items() if v.get("type") == "aws:cloudformation:stack")
            if len(stacks) != 1:
                raise ValueError(f"{directory}: expected one stack, found {stacks}; name the one to load")
            stack_name = stacks[0]
        template_path = directory / f"{stack_name}.template.json"
        if not template_path.exists():
            raise FileNotFoundError(f"{template_path}: no synthesized template; run `python app.py` with CDK_OUTDIR")
        assets_path = directory / f"{stack_name}.assets.json"
        assets = json.loads(assets_path.read_text()) if assets_path.exists() else {}
        return cls(directory, stack_name, json.loads(template_path.read_text()), assets)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template["Resources"]

    def image_asset_directory(self, image_uri: str) -> Path:
        """The staged build context of the image asset an ECR URI (tag = asset hash) points at."""
        tag = image_uri.rsplit(":", 1)[-1]
        image = self.assets.get("dockerImages", {}).get(tag)
        if image is None:
            raise KeyError(f"{image_uri}: no docker image asset with hash {tag} in {self.directory}")
        return self.directory / image["source"]["directory"]


@dataclass
class Resolver:
    """Evaluates Ref, Fn::GetAtt, Fn::Join, Fn::Sub, Fn::Select, Fn::Split, Fn::GetAZs against known physical
    values."""

    pseudo: dict[str, str]
    refs: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name not in self.refs:
            raise KeyError(f"Ref {name}: resource not created yet")
        return self.refs[name]

    def get_att(self, logical_id: str, attribute: str) -> Any:
        try:
            return self.attributes[logical_id][attribute]
        except KeyError:
            raise KeyError(f"Fn::GetAtt {logical_id}.{attribute}: not known") from None

    def _sub(self, template: str, variables: dict[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(self.resolve(variables[name]))
            if "." in name and not name.startswith("AWS::"):
                logical, attribute = name.split(".", 1)
                return str(self.get_att(logical, attribute))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, template)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Fn::GetAtt":
                logical, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.get_att(logical, attribute)
            if key == "Fn::Join":
                separator, items = argument
                return separator.join(str(v) for v in self.resolve(items))
            if key == "Fn::Sub":
                template, variables = (argument, {}) if isinstance(argument, str) else argument
                return self._sub(template, variables)
            if key == "Fn::Select":
                index, items = argument
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::GetAZs":  # the region's Availability Zones, as moto's EC2 names them
                region = self.resolve(argument) or self.pseudo["AWS::Region"]
                return [f"{region}{zone}" for zone in "abc"]
            if key == "Fn::Split":
                separator, text = argument
                return str(self.resolve(text)).split(separator)
            if key.startswith("Fn::"):
                raise NotImplementedError(f"{key} is not supported by the local runtime")
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def references(value: Any) -> set[str]:
    """Logical ids a property value refers to (for creation order)."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, dict):
        for key, argument in value.items():
            if key == "Ref" and isinstance(argument, str) and not argument.startswith("AWS::"):
                found.add(argument)
            elif key == "Fn::GetAtt":
                found.add(argument[0] if isinstance(argument, list) else argument.split(".", 1)[0])
            elif key == "Fn::Sub":
                template = argument if isinstance(argument, str) else argument[0]
                for name in re.findall(r"\$\{([^}!]+)\}", template):
                    if not name.startswith("AWS::"):
                        found.add(name.split(".", 1)[0])
                if not isinstance(argument, str):
                    found |= references(argument[1])
            else:
                found |= references(argument)
    return found


def creation_order(resources: dict[str, dict[str, Any]]) -> list[str]:
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(logical: str) -> None:
        if state.get(logical) == "done":
            return
        if state.get(logical) == "visiting":
            raise ValueError(f"dependency cycle at {logical}")
        state[logical] = "visiting"
        resource = resources[logical]
        depends = resource.get("DependsOn", [])
        depends = [depends] if isinstance(depends, str) else depends
        for dependency in sorted((references(resource.get("Properties", {})) | set(depends)) & set(resources)):
            visit(dependency)
        state[logical] = "done"
        order.append(logical)

    for logical in sorted(resources):
        visit(logical)
    return order
