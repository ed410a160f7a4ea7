"""A SMART authorization server on loopback for the SMART app tests: authlib's OAuth 2.0 server
(authorization code grant, PKCE required) on Flask, with an EHR's launch context.

Each `launch` id the test registers says which patient the EHR has open, what it passes back as
appContext, whether the user grants access, and how long the token lives. The token is the one
the test FHIR server accepts. Every authorize request is kept for the tests to inspect."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, request
from werkzeug.serving import make_server


@dataclass
class Launch:
    patient: str | None
    app_context: str | None = None
    grant: bool = True
    expires_in: int = 300


@dataclass
class Code:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    launch: Launch
    code_challenge: str
    code_challenge_method: str
    issued: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


class Client(ClientMixin):  # type: ignore[misc]
    """A public client (no secret: PKCE), registered with one redirect URL."""

    def __init__(self, client_id: str, redirect_uri: str) -> None:
        self.client_id, self.redirect_uri = client_id, redirect_uri

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


class SmartAuthServer:
    """Started on a free loopback port; `stop()` ends it."""

    def __init__(self, client_id: str, redirect_uri: str, access_token: str) -> None:
        self.client = Client(client_id, redirect_uri)
        self.access_token = access_token
        self.launches: dict[str, Launch] = {}
        self.codes: dict[str, Code] = {}
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        app = Flask("smart-auth-server")
        server = AuthorizationServer(app, query_client=self._query_client,
                                     save_token=lambda token, req: None)
        server.register_token_generator("default", self._token)
        outer = self

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["none"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                launch = outer.launches[req.payload.data["launch"]]
                outer.codes[code] = Code(
                    code, req.client.client_id, req.payload.redirect_uri, req.payload.scope,
                    launch, req.payload.data.get("code_challenge", ""),
                    req.payload.data.get("code_challenge_method", ""))

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                found = outer.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code: Code) -> None:
                outer.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> Launch:
                return authorization_code.launch

        server.register_grant(CodeGrant, [CodeChallenge(required=True)])

        @app.get("/authorize")
        def authorize() -> Any:
            self.authorize_requests.append(dict(request.args))
            launch = self.launches.get(request.args.get("launch", ""))
            if launch is None:
                return "unknown launch", 400
            grant = server.get_consent_grant(end_user=launch)
            return server.create_authorization_response(
                grant_user=launch if launch.grant else None, grant=grant)

        @app.post("/token")
        def token() -> Any:
            self.token_requests.append(dict(request.form))
            return server.create_token_response()

        self._http = make_server("127.0.0.1", 0, app, threaded=True)
        self.base = f"http://127.0.0.1:{self._http.server_port}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def _query_client(self, client_id: str) -> Client | None:
        return self.client if client_id == self.client.client_id else None

    def _token(self, *, user: Launch, scope: str, **_: Any) -> dict[str, Any]:
        token: dict[str, Any] = {"access_token": self.access_token, "token_type": "Bearer",
                                 "expires_in": user.expires_in, "scope": scope}
        if user.patient is not None:
            token["patient"] = user.patient
        if user.app_context is not None:
            token["appContext"] = user.app_context
        return token

    def add_launch(self, launch: Launch) -> str:
        launch_id = secrets.token_urlsafe(12)
        self.launches[launch_id] = launch
        return launch_id

    def configuration(self) -> dict[str, Any]:
        """What a FHIR server publishes at /.well-known/smart-configuration."""
        return {"authorization_endpoint": f"{self.base}/authorize",
                "token_endpoint": f"{self.base}/token",
                "token_endpoint_auth_methods_supported": ["none"],
                "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "capabilities": ["launch-ehr", "client-public", "context-ehr-patient",
                                 "permission-patient"]}

    def stop(self) -> None:
        self._http.shutdown()
        self._thread.join(timeout=10)
