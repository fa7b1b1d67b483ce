"""The approver role: what `refit approve` / `refit reject` need, and nothing else.

One role per project, not per model: the people who decide approvals are usually one team across a project's models,
and one role keeps one trust relationship to review (`[approval] approvers` in refit.toml). It may only call the
Approve functions of this project's models through their function URLs (AuthType AWS_IAM) and read the stack's
outputs to find them. It holds no task token and cannot send a task result: the Approve function reads the pending
approval, applies the rules to the identity AWS verified and sends the result itself.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnOutput, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct
from refit_core.config import ApprovalSettings


class ApproverRole(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: ApprovalSettings,
        approve_urls: dict[str, lambda_.FunctionUrl],  # model name -> its Approve function's URL (manual models)
    ) -> None:
        super().__init__(scope, construct_id)
        principals: list[iam.IPrincipal] = [iam.ArnPrincipal(arn) for arn in settings.approvers] or [
            iam.AccountRootPrincipal()
        ]
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.CompositePrincipal(*principals),
            description="refit approve / reject: call the project's Approve functions through their IAM-authenticated "
            "URLs, which decide as the verified caller",
        )
        # lambda:InvokeFunctionUrl with lambda:FunctionUrlAuthType = AWS_IAM, and (function URLs created since October
        # 2025 need both) lambda:InvokeFunction with lambda:InvokedViaFunctionUrl = true: never a direct Invoke, which
        # could hand the function a forged requestContext.
        for url in approve_urls.values():
            url.grant_invoke_url(self.role)
        # `refit approve` finds the URLs in the stack's ApproveUrls output: this stack only.
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["cloudformation:DescribeStacks"], resources=[Aws.STACK_ID])
        )
        CfnOutput(self, "ApproverRoleArn", value=self.role.role_arn, description="assume it to run `refit approve`")
        if approve_urls:
            CfnOutput(
                Stack.of(self),
                "ApproveUrls",
                value=Stack.of(self).to_json_string({model: url.url for model, url in sorted(approve_urls.items())}),
                description="model -> the URL `refit approve` / `reject` send decisions to (SigV4, service lambda)",
            )
