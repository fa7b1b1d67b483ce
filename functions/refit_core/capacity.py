"""Serving capacity: instance counts, autoscaling carried across endpoint changes, and the canary's extra cost.

Autoscaling is Application Auto Scaling target tracking on `SageMakerVariantInvocationsPerInstance`, on the scalable
target `endpoint/<endpoint>/variant/<variant>` (dimension `sagemaker:variant:DesiredInstanceCount`). SageMaker's rule
for endpoints with scalable targets (developer guide, "Update endpoints that use auto scaling"): deregister the
targets before an UpdateEndpoint that changes the variants, register them again once the endpoint is InService.
refit therefore deregisters every target on the endpoint right before each UpdateEndpoint it makes (`deregister`;
deregistering also deletes the target's policies) and registers the serving variant, `champion`, after every wait for
InService (`register`). The champion keeps its scaling while a canary runs; the challenger runs on a fixed count; a
promoted challenger serves as `champion` and gets the policy; a rollback or redeploy gets it back.

While the targets are deregistered (from UpdateEndpoint until InService) nothing scales, so a replacing variant starts
at the serving variant's current count, kept within the autoscaling bounds (`initial_count`), not at the configured
initial count: a promotion does not shrink a fleet that had scaled out for the traffic it takes over.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from refit_core.config import AutoscalingSettings, CapacitySettings

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
POLICY_NAME = "refit-invocations-per-instance"


def resource_id(endpoint_name: str, variant_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant_name}"


def current_counts(endpoint: dict[str, Any] | None) -> dict[str, int]:
    """Each variant's CurrentInstanceCount from DescribeEndpoint (a variant still being created has none)."""
    if endpoint is None:
        return {}
    return {
        v["VariantName"]: int(v["CurrentInstanceCount"])
        for v in endpoint.get("ProductionVariants", [])
        if v.get("CurrentInstanceCount")
    }


def initial_count(capacity: CapacitySettings, serving: int | None) -> int:
    """The InitialInstanceCount of a variant that takes over from one serving `serving` instances: without autoscaling
    the configured `instance_count`; with it, the serving count kept within [min_instances, max_instances] (the
    configured count when nothing serves yet)."""
    scaling = capacity.autoscaling
    if scaling is None or serving is None:
        return capacity.instance_count
    return max(scaling.min_instances, min(scaling.max_instances, serving))


def scalable_targets(autoscaling: Any, endpoint_name: str, variant_names: list[str]) -> list[dict[str, Any]]:
    """The registered scalable targets among the endpoint's variants."""
    if not variant_names:
        return []
    ids = [resource_id(endpoint_name, name) for name in variant_names]
    targets: list[dict[str, Any]] = []
    for page in autoscaling.get_paginator("describe_scalable_targets").paginate(
        ServiceNamespace=NAMESPACE, ResourceIds=ids, ScalableDimension=DIMENSION
    ):
        targets.extend(page["ScalableTargets"])
    return targets


def deregister(
    autoscaling: Any, endpoint_name: str, endpoint: dict[str, Any] | None, keep: set[str] | None = None
) -> list[str]:
    """Deregister the scalable targets of the endpoint's variants (which deletes their policies) before an
    UpdateEndpoint, and return the variants deregistered. `keep` spares variants the update leaves in place on the same
    instance type, which SageMaker allows to stay registered: only the restore path, after which no registration
    follows, passes it."""
    if endpoint is None:
        return []
    names = [v["VariantName"] for v in endpoint.get("ProductionVariants", [])]
    done = []
    for target in scalable_targets(autoscaling, endpoint_name, names):
        variant = target["ResourceId"].rsplit("/", 1)[-1]
        if keep is not None and variant in keep:
            continue
        autoscaling.deregister_scalable_target(
            ServiceNamespace=NAMESPACE, ResourceId=target["ResourceId"], ScalableDimension=DIMENSION
        )
        done.append(variant)
    return done


def unchanged_variants(current: list[dict[str, Any]], replacement: list[dict[str, Any]]) -> set[str]:
    """Variants (ProductionVariants of two endpoint configs) that an update keeps on the same instance type."""
    kept = {v["VariantName"]: v.get("InstanceType") for v in replacement}
    return {
        v["VariantName"]
        for v in current
        if v["VariantName"] in kept and kept[v["VariantName"]] == v.get("InstanceType")
    }


def target_tracking(scaling: AutoscalingSettings) -> dict[str, Any]:
    return {
        "TargetValue": float(scaling.target_invocations_per_instance),
        "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
        "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
        "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
    }


def register(autoscaling: Any, endpoint_name: str, variant_name: str, scaling: AutoscalingSettings) -> dict[str, Any]:
    """Register the variant as a scalable target within the configured bounds and put the target-tracking policy on
    it; both calls are idempotent (a second registration updates the bounds, a second policy of the same name
    replaces the first), so a retried Lambda or a changed configuration lands on the same state."""
    target = resource_id(endpoint_name, variant_name)
    autoscaling.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=target,
        ScalableDimension=DIMENSION,
        MinCapacity=scaling.min_instances,
        MaxCapacity=scaling.max_instances,
    )
    policy = autoscaling.put_scaling_policy(
        PolicyName=POLICY_NAME,
        ServiceNamespace=NAMESPACE,
        ResourceId=target,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration=target_tracking(scaling),
    )
    return {
        "variant": variant_name,
        "resource_id": target,
        "min_instances": scaling.min_instances,
        "max_instances": scaling.max_instances,
        "target_invocations_per_instance": float(scaling.target_invocations_per_instance),
        "policy_name": POLICY_NAME,
        "policy_arn": policy.get("PolicyARN"),
    }


def canary_cost(
    instances: int, instance_type: str, price_usd_per_hour: float | None, since: str, until: str
) -> dict[str, Any]:
    """The canary's extra serving cost: the challenger's instances x its hosting price x the time the challenger
    variant existed, from the UpdateEndpoint that added it (`since`) to the one that removed it (`until`). Billed from
    the instances' start to their termination, which lag those calls by the update's own minutes; an unknown price
    gives the instance-hours and no cost."""
    seconds = max(0.0, (datetime.fromisoformat(until) - datetime.fromisoformat(since)).total_seconds())
    instance_hours = instances * seconds / 3600
    return {
        "challenger_instances": instances,
        "instance_type": instance_type,
        "price_usd_per_hour": price_usd_per_hour,
        "started_at": since,
        "ended_at": until,
        "seconds": round(seconds, 3),
        "instance_hours": round(instance_hours, 6),
        "cost_usd": round(instance_hours * price_usd_per_hour, 6) if price_usd_per_hour is not None else None,
    }
