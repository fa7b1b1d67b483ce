"""A Kubeflow Pipelines (v2) step that runs a refit retraining run and waits for it, and an example pipeline.

The step is a container running `refit trigger MODEL --follow --reason REASON [--data URI] [--timeout S]`: it prints
each state as the run enters it and the run's summary, and exits 0 only when the run SUCCEEDED (1 when it ended
FAILED, TIMED_OUT or ABORTED, when --timeout passed, or when AWS could not be read; 2 for bad input; see
scripts/run_commands.py), so a failed run fails the step and the pipeline. Caching is off: a run is an action,
not a pure function of its inputs.

The image is yours: one with refit installed (`pip install .` of this repository) and your refit.toml, e.g. at
/refit/refit.toml; the pod needs AWS credentials that may read the stack's outputs and start and read the model's
state machine (IRSA on EKS). Compile the example:

    python -m scripts.integrations.kubeflow --image REGISTRY/refit:TAG -o refit_pipeline.yaml
"""

import argparse
from typing import Any, Optional

from kfp import compiler, dsl

DEFAULT_CONFIG = "/refit/refit.toml"


def refit_run_component(image: str) -> Any:
    """The step, for `image` (a KFP component: call it inside a pipeline with model=, reason=, and optionally
    data= an s3:// batch and timeout_seconds=)."""

    @dsl.container_component
    def refit_run(
        model: str,
        reason: str = "Kubeflow pipeline",
        config: str = DEFAULT_CONFIG,
        data: Optional[str] = None,  # noqa: UP045 - KFP reads typing.Optional, not `str | None`
        timeout_seconds: Optional[float] = None,  # noqa: UP045
    ) -> dsl.ContainerSpec:
        return dsl.ContainerSpec(
            image=image,
            command=["refit"],
            args=[
                "--config",
                config,
                "trigger",
                model,
                "--follow",
                "--reason",
                reason,
                dsl.IfPresentPlaceholder(input_name="data", then=["--data", data]),
                dsl.IfPresentPlaceholder(input_name="timeout_seconds", then=["--timeout", timeout_seconds]),
            ],
        )

    return refit_run


def example_pipeline(image: str) -> Any:
    """A pipeline that retrains one model: its run, started and followed by the refit step."""
    refit_run = refit_run_component(image)

    @dsl.pipeline(name="refit-retrain", description="Retrain a model with refit and wait for the run's outcome")
    def refit_retrain(model: str = "churn", reason: str = "Kubeflow pipeline") -> None:
        refit_run(model=model, reason=reason).set_caching_options(False)

    return refit_retrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="compile the example refit pipeline (KFP v2 IR YAML)")
    parser.add_argument("--image", required=True, help="an image with refit installed and your refit.toml")
    parser.add_argument("-o", "--output", default="refit_pipeline.yaml")
    args = parser.parse_args(argv)
    compiler.Compiler().compile(example_pipeline(args.image), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
