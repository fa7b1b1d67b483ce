"""The approver role: what `refit approve` / `refit reject` need, and nothing else.

One role per project, not per model: the people who decide approvals are usually one team across a project's models,
and one role keeps one trust relationship to review (`[approval] approvers` in refit.toml). It is still limited to
this project's models: their approval items in the audit table, their model package groups.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Stack
from aws_cdk import aws_iam as iam
from constructs import Construct
from refit_core.approvals import approval_partition
from refit_core.config import ApprovalSettings

from stacks.storage import Storage


class ApproverRole(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: ApprovalSettings,
        storage: Storage,
        models: dict[str, str],  # model name -> its model package group name
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        principals: list[iam.IPrincipal] = [iam.ArnPrincipal(arn) for arn in settings.approvers] or [
            iam.AccountRootPrincipal()
        ]
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.CompositePrincipal(*principals),
            description="refit approve / reject: read and delete the project's pending approvals, decide the model "
            "package, send the decision to the waiting run",
        )
        # The pending approvals only: partition `approval#<model>`, never a model's runs, ledger or lock.
        storage.grant_audit(
            [approval_partition(model) for model in models], self.role, "dynamodb:GetItem", "dynamodb:DeleteItem"
        )
        storage.grant_key(self.role, write=False)  # the audit table is encrypted with the project key
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker:UpdateModelPackage"],
                resources=[
                    f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}:model-package/{group}/*"
                    for group in models.values()
                ],
            )
        )
        # The Service Authorization Reference lists no resource type for states:SendTaskSuccess: the task token
        # names the task, and IAM can only be given `*`. A reject is a success with `approved: false`, so
        # SendTaskFailure is not granted.
        self.role.add_to_policy(iam.PolicyStatement(actions=["states:SendTaskSuccess"], resources=["*"]))
        # `refit approve` without --audit-table reads the stack's outputs: this stack only.
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["cloudformation:DescribeStacks"], resources=[Aws.STACK_ID])
        )
        CfnOutput(self, "ApproverRoleArn", value=self.role.role_arn, description="assume it to run `refit approve`")
