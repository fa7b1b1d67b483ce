"""Lambda function URLs on the local runtime: moto stores a function's URL config and answers with an
`https://<id>.lambda-url.<region>.on.aws/` URL that nothing serves. Here each URL config gets an HTTP server on
127.0.0.1 (CreateFunctionUrlConfig and GetFunctionUrlConfig return `http://127.0.0.1:<port>/`), which does what the
Lambda service does for AuthType AWS_IAM:

- the request must carry a SigV4 signature (service `lambda`, the runtime's region) that verifies with the secret of
  its access key: an IAM user's key or an STS session's (with its session token) as moto issued them, or the host's
  own (the runtime's administrator, as for the local IAM); otherwise 403, as AWS answers;
- the identity must be allowed `lambda:InvokeFunctionUrl` (with `lambda:FunctionUrlAuthType`) and
  `lambda:InvokeFunction` (with `lambda:InvokedViaFunctionUrl`) on the function by its policies as synthesized
  (scripts/local_aws/iam.py); a session of a role the stack does not define, or an IAM user, has none here;
- then the function is invoked (the Lambda bridge) with the payload format 2.0 event AWS builds, the verified caller in
  `requestContext.authorizer.iam` (userArn, accountId, userId, callerId, accessKey), and its reply is mapped back to
  HTTP (`statusCode` / `headers` / `body`, or a plain JSON value as a 200; a function error is a 502).

AuthType NONE URLs are served without the signature and IAM checks (the function's resource policy, which is not
evaluated locally, would decide on AWS).
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.awslambda.models import LambdaFunction, lambda_backends
from moto.iam.access_control import CreateAccessKeyFailure, create_access_key
from moto.iam.models import iam_backends

from scripts.local_aws.iam import LocalIam, Principal, function_url_requests

MAX_CLOCK_SKEW_SECONDS = 300  # SigV4: a request dated further from the server's clock is refused
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")


class Refused(Exception):
    """A request the Lambda service refuses before invoking the function: (status, AWS's error type, message)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class Caller:
    """The identity a request's signature proved: ARN, account, user id, the access key, and the stood-up role's
    policies when it is a session of one (None: the host, the runtime's administrator)."""

    def __init__(self, arn: str, account: str, user_id: str, access_key: str, principal: Principal | None) -> None:
        self.arn = arn
        self.account = account
        self.user_id = user_id
        self.access_key = access_key
        self.principal = principal


def _between(text: str, start: str, end: str) -> str:
    return text.partition(start)[2].partition(end)[0]


class FunctionUrls:
    """Serves the stood-up functions' URLs. Install before the stand-up creates them; `connect` once the Lambda
    bridge and the local IAM exist (a request before that is answered 503)."""

    def __init__(self, account: str, region: str, host_access_key: str, host_secret: str, host_arn: str) -> None:
        self.account = account
        self.region = region
        self.host = (host_access_key, host_secret, host_arn)
        self.invoke: Callable[[str, str, dict], bytes] | None = None
        self.iam: LocalIam | None = None
        self.servers: dict[str, ThreadingHTTPServer] = {}  # function ARN -> its URL's server
        self.lock = threading.Lock()
        self.patches: list[Any] = []

    # ---------------------------------------------------------------- install
    def install(self) -> None:
        original_create = LambdaFunction.create_url_config
        original_delete = LambdaFunction.delete_url_config
        urls = self

        def create_url_config(function: LambdaFunction, config: dict[str, Any]) -> Any:
            url_config = original_create(function, config)
            url_config.url = urls.serve(function.function_arn, function.function_name)
            return url_config

        def delete_url_config(function: LambdaFunction) -> None:
            original_delete(function)
            urls.stop(function.function_arn)

        self.patches = [
            mock.patch.object(LambdaFunction, "create_url_config", create_url_config),
            mock.patch.object(LambdaFunction, "delete_url_config", delete_url_config),
        ]
        for patch in self.patches:
            patch.start()

    def connect(self, invoke: Callable[[str, str, dict], bytes], iam: LocalIam | None) -> None:
        self.invoke = invoke
        self.iam = iam

    def uninstall(self) -> None:
        for arn in list(self.servers):
            self.stop(arn)
        for patch in reversed(self.patches):
            patch.stop()
        self.patches = []

    def serve(self, function_arn: str, function_name: str) -> str:
        urls = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                urls.handle(self, function_arn, function_name)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name=f"function-url-{function_name}", daemon=True).start()
        with self.lock:
            self.stop(function_arn)
            self.servers[function_arn] = server
        return f"http://127.0.0.1:{server.server_address[1]}/"

    def stop(self, function_arn: str) -> None:
        server = self.servers.pop(function_arn, None)
        if server is not None:
            server.shutdown()
            server.server_close()

    # ---------------------------------------------------------------- one request
    def handle(self, request: BaseHTTPRequestHandler, function_arn: str, function_name: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        try:
            auth_type = self._auth_type(function_name)
            caller = None
            if auth_type == "AWS_IAM":
                caller = self.authenticate(request.command, request.path, dict(request.headers.items()), body)
                self.authorize(caller, function_arn, auth_type)
            if self.invoke is None:
                raise Refused(503, "ServiceUnavailableException", "the local runtime is still starting")
            status, headers, payload = self._call(request, function_name, body, caller)
        except Refused as refused:
            status, payload = refused.status, json.dumps({"Message": str(refused)}).encode()
            headers = {"content-type": "application/json", "x-amzn-ErrorType": refused.error_type}
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(payload)

    def _auth_type(self, function_name: str) -> str:
        function = lambda_backends[self.account][self.region].get_function(function_name)
        return (function.url_config.config.get("AuthType") if function.url_config else None) or "AWS_IAM"

    def authenticate(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Caller:
        """The caller a SigV4-signed request proves, or Refused (403) as the Lambda service refuses it."""
        authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if not authorization.startswith("AWS4-HMAC-SHA256 "):
            raise Refused(403, "AccessDeniedException", "Forbidden")
        scope = _between(authorization, "Credential=", ",").split("/")
        signed = _between(authorization, "SignedHeaders=", ",").split(";")
        signature = authorization.partition("Signature=")[2].strip()
        if len(scope) != 5 or scope[3] != "lambda" or scope[2] != self.region or scope[4] != "aws4_request":
            raise Refused(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region and to service 'lambda' ({'/'.join(scope[1:])})",
            )
        lower = {k.lower(): v for k, v in headers.items()}
        stamp = lower.get("x-amz-date", "")
        try:
            signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise Refused(403, "InvalidSignatureException", "the request has no valid X-Amz-Date") from None
        if abs((datetime.now(UTC) - signed_at).total_seconds()) > MAX_CLOCK_SKEW_SECONDS:
            raise Refused(403, "InvalidSignatureException", "Signature expired: the request date is too far off")
        caller, secret, token = self._credentials(scope[0], lower)
        request = AWSRequest(
            method=method,
            url=f"http://{lower.get('host', '')}{path}",
            data=body,
            headers={k: v for k, v in headers.items() if k.lower() in signed},
        )
        request.context["timestamp"] = stamp
        auth = SigV4Auth(Credentials(scope[0], secret, token), "lambda", self.region)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if "host" not in signed or not hmac.compare_digest(expected, signature):
            raise Refused(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your AWS "
                "Secret Access Key and signing method.",
            )
        return caller

    def _credentials(self, access_key: str, headers: dict[str, str]) -> tuple[Caller, str, str | None]:
        host_key, host_secret, host_arn = self.host
        if access_key == host_key:
            return Caller(host_arn, self.account, access_key, access_key, None), host_secret, None
        token_header = (
            {"X-Amz-Security-Token": headers["x-amz-security-token"]} if "x-amz-security-token" in headers else {}
        )
        try:
            key = create_access_key(self.account, "aws", access_key, token_header)
        except CreateAccessKeyFailure:
            raise Refused(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            ) from None
        credentials = key.create_credentials()
        principal = self.iam.principal_of_session(key.arn) if self.iam is not None else None
        return (
            Caller(key.arn, self.account, self._user_id(key.arn), access_key, principal),
            credentials.secret_key,
            (credentials.token),
        )

    def _user_id(self, arn: str) -> str:
        """AWS's userId / callerId: `<role id>:<session>` for a role session, the user's id for an IAM user."""
        backend = iam_backends[self.account]["aws"]
        resource = arn.split(":", 5)[-1]
        if resource.startswith("assumed-role/"):
            role, _, session = resource.removeprefix("assumed-role/").rpartition("/")
            return f"{backend.get_role(role).id}:{session}"
        return backend.get_user(resource.rsplit("/", 1)[-1]).id

    def authorize(self, caller: Caller, function_arn: str, auth_type: str) -> None:
        """The local IAM's decision on the URL's two actions; the host (administrator) and a runtime without the local
        IAM allow every verified caller."""
        if self.iam is None or caller.arn == self.host[2]:
            return
        requests = function_url_requests(function_arn, auth_type)
        if caller.principal is None:
            message = (
                f"User: {caller.arn} is not authorized to perform: lambda:InvokeFunctionUrl on resource: {function_arn} "
                "because no identity-based policy allows it (local IAM: it knows the stack's roles' policies only)"
            )
        else:
            message = self.iam.check(caller.principal, "lambda", "InvokeFunctionUrl", requests)
        if message is not None:
            raise Refused(403, "AccessDeniedException", f"Forbidden: {message}")

    def _call(
        self, request: BaseHTTPRequestHandler, function_name: str, body: bytes, caller: Caller | None
    ) -> tuple[int, dict[str, str], bytes]:
        response_headers: dict[str, str] = {}
        reply = self.invoke(function_name, json.dumps(self.event(request, body, caller)), response_headers)
        if response_headers.get("x-amz-function-error"):
            return 502, {"content-type": "application/json"}, json.dumps({"Message": "Internal Server Error"}).encode()
        result = json.loads(reply or b"null")
        if not (isinstance(result, dict) and "statusCode" in result):
            return 200, {"content-type": "application/json"}, json.dumps(result).encode()
        payload = result.get("body") or ""
        data = base64.b64decode(payload) if result.get("isBase64Encoded") else str(payload).encode()
        return int(result["statusCode"]), {str(k): str(v) for k, v in (result.get("headers") or {}).items()}, data

    def event(self, request: BaseHTTPRequestHandler, body: bytes, caller: Caller | None) -> dict[str, Any]:
        """The payload format 2.0 event the Lambda service gives a function behind a URL."""
        split = urlsplit(request.path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        content_type = headers.get("content-type", "")
        text = not body or any(kind in content_type for kind in TEXT_TYPES)
        url_id = uuid.uuid5(uuid.NAMESPACE_URL, str(request.server.server_address)).hex
        now = time.time()
        authorizer = None
        if caller is not None:
            authorizer = {
                "iam": {
                    "accessKey": caller.access_key,
                    "accountId": caller.account,
                    "callerId": caller.user_id,
                    "cognitoIdentity": None,
                    "principalOrgId": None,
                    "userArn": caller.arn,
                    "userId": caller.user_id,
                }
            }
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": split.path or "/",
            "rawQueryString": split.query,
            "headers": headers,
            **({"queryStringParameters": dict(parse_qsl(split.query))} if split.query else {}),
            "requestContext": {
                "accountId": "anonymous" if caller is None else self.account,
                "apiId": url_id,
                **({"authorizer": authorizer} if authorizer else {}),
                "domainName": f"{url_id}.lambda-url.{self.region}.on.aws",
                "domainPrefix": url_id,
                "http": {
                    "method": request.command,
                    "path": split.path or "/",
                    "protocol": "HTTP/1.1",
                    "sourceIp": request.client_address[0],
                    "userAgent": headers.get("user-agent", ""),
                },
                "requestId": str(uuid.uuid4()),
                "routeKey": "$default",
                "stage": "$default",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "body": body.decode() if text else base64.b64encode(body).decode(),
            "isBase64Encoded": not text,
        }
