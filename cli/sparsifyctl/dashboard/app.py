"""The dashboard's web app: server-rendered pages (fastapi + jinja2), no CDN, no build step.

Pages call the CLI's own functions: ``compare.load_runs``/``compare_html`` (compare view),
``render_report_html`` (one run), ``predict.predict`` (predict page), and the experiment
flags / ``build_manifest`` (new experiment). Access control: an optional token, checked on
every request (header or a cookie set by ``/?token=...``, constant-time compare);
``allowed_hosts`` rejects other Host headers (DNS rebinding) when served on loopback.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sparsify_operator.kube import ApiError
from sparsify_runner.errors import InputError
from sparsify_runner.spec import DeployTarget
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from . import forms
from .sources import (
    HEADLINE,
    LIST_NUMBERS,
    ClusterTarget,
    Entry,
    NotAvailable,
    Sources,
    optional_module,
    point_cells,
)

HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "sparsify_dashboard_token"
TOKEN_HEADER = "x-sparsify-token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
TERMINAL = ("Succeeded", "Failed", "Unreadable")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'self'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
PREDICT_LEVELS = "0,0.2,0.5,0.8,1"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _same(supplied: str | None, token: str) -> bool:
    return supplied is not None and hmac.compare_digest(supplied.encode(), token.encode())


def _supplied_token(request: Request) -> str | None:
    header = request.headers.get(TOKEN_HEADER)
    if header:
        return header
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(TOKEN_COOKIE)


def create_app(
    runs: list[str] | None = None,
    cluster: ClusterTarget | None = None,
    token: str | None = None,
    *,
    allowed_hosts: list[str] | None = None,
    predict_seconds: float = 6.0,
    refresh_seconds: int = 10,
) -> FastAPI:
    """The dashboard over ``runs`` (folders / s3:// prefixes) and an optional ``cluster``.

    ``token``: required on every request when set. ``allowed_hosts``: accepted Host headers
    (None: any; the CLI passes the loopback names when it binds to loopback)."""
    sources = Sources(runs=list(runs or []), cluster=cluster)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(headline=HEADLINE, list_numbers=LIST_NUMBERS, cluster_on=cluster is not None)
    app = FastAPI(title="sparsify dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sources = sources

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def message(request: Request, title: str, text: str, status_code: int) -> HTMLResponse:
        return page(request, "message.html", status_code=status_code, title=title, text=text)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None:
            offered = request.query_params.get("token")
            if offered is not None:
                if not _same(offered, token):
                    return _secure(
                        message(
                            request,
                            "Wrong token",
                            "the token in the URL is not this dashboard's; "
                            "open the URL printed when the dashboard started",
                            401,
                        )
                    )
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                resp: Response = RedirectResponse(target, status_code=303)
                resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return _secure(resp)
            if not _same(_supplied_token(request), token):
                return _secure(
                    message(
                        request,
                        "Token required",
                        "this dashboard needs its token: open the URL printed when it started (/?token=...) "
                        f"or send the '{TOKEN_HEADER}' header",
                        401,
                    )
                )
        if request.method == "POST":
            origin = request.headers.get("origin")
            # a foreign (or sandboxed: "null") origin must not drive the form (apply to the cluster)
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return _secure(
                    message(request, "Forbidden", f"cross-site form post from {origin} refused", 403)
                )
        return _secure(await call_next(request))

    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        title = "Not found" if exc.status_code == 404 else "Error"
        text = (
            exc.detail
            if exc.status_code != 404 or exc.detail != "Not Found"
            else (f"nothing at {request.url.path}; go back to the list")
        )
        return _secure(message(request, title, str(text), exc.status_code))

    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def lookup(key: str, kind: str) -> Entry:
        entry = sources.find(key)
        if entry is None or entry.kind != kind:
            raise StarletteHTTPException(
                404, f"no {kind} '{key}' (it may have been removed); go back to the list"
            )
        return entry

    # ---- list ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        entries, problems = sources.entries()
        experiments = [e for e in entries if e.kind == "experiment"]
        sweeps = [e for e in entries if e.kind == "sweep"]
        live = cluster is not None and any(e.phase not in TERMINAL for e in entries if e.origin == "cluster")
        return page(
            request,
            "index.html",
            experiments=experiments,
            sweeps=sweeps,
            problems=problems,
            refresh=refresh_seconds if cluster is not None else 0,
            live=live,
            sources=sources.runs,
            namespace=cluster.namespace if cluster else None,
        )

    # ---- one run ------------------------------------------------------------------------------
    @app.get("/runs/{key:path}", response_class=HTMLResponse)
    def run_page(request: Request, key: str):
        entry = lookup(key, "experiment")
        record, problem = None, None
        try:
            record = sources.records(entry)[0]
        except NotAvailable as err:
            problem = str(err)
        except (InputError, IndexError) as err:
            problem = str(err) or "the run has no report yet"
        has_report = record is not None and record.report is not None
        like = ""
        if has_report:
            folder = Path(entry.source) if entry.origin == "local" else None
            like = urlencode(forms.values_from_experiment(record.report.experiment or {}, folder))
        return page(
            request,
            "run.html",
            entry=entry,
            record=record,
            problem=problem,
            has_report=has_report,
            like=like,
            live=entry.origin == "cluster" and entry.phase not in TERMINAL,
            refresh=refresh_seconds,
        )

    @app.get("/report/{key:path}", response_class=HTMLResponse)
    def report_document(request: Request, key: str):
        entry = lookup(key, "experiment")
        try:
            report_html = optional_module("sparsify_runner.report_html", "the HTML report")
            records = sources.records(entry)
        except NotAvailable as err:
            return message(request, "Not available", str(err), 501)
        except InputError as err:
            return message(request, "No report", str(err), 404)
        if not records or records[0].report is None:
            raise StarletteHTTPException(404, f"run '{key}' has no report yet")
        return HTMLResponse(report_html.render_report_html(records[0].report))

    # ---- sweeps -------------------------------------------------------------------------------
    @app.get("/sweeps/{key:path}", response_class=HTMLResponse)
    def sweep_page(request: Request, key: str):
        entry = lookup(key, "sweep")
        try:
            data = sources.sweep_data(entry)
        except NotAvailable as err:
            return page(request, "sweep.html", entry=entry, problem=str(err), points=[], data={})
        except (OSError, ValueError, ApiError) as err:
            problem = f"cannot read the sweep: {' '.join(str(err).split())}"
            return page(request, "sweep.html", entry=entry, problem=problem, points=[], data={})
        points = [(point_cells(p), sources.point_key(entry, p), p) for p in data.get("points") or []]
        compare_keys = [k for _, k, _ in points if k]
        return page(
            request,
            "sweep.html",
            entry=entry,
            problem=None,
            points=points,
            data=data,
            compare_query=urlencode([("run", k) for k in compare_keys]),
            live=entry.origin == "cluster" and entry.phase not in TERMINAL,
            refresh=refresh_seconds,
        )

    # ---- compare ------------------------------------------------------------------------------
    def selected(request: Request) -> list[Entry]:
        keys = request.query_params.getlist("run")
        if not keys:
            raise StarletteHTTPException(400, "select at least one run to compare (tick them on the list)")
        entries, _ = sources.entries()
        by_key = {e.key: e for e in entries}
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise StarletteHTTPException(404, f"no run '{missing[0]}' (it may have been removed)")
        return [by_key[k] for k in keys]

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request):
        chosen = selected(request)
        return page(request, "compare.html", chosen=chosen, query=urlencode([("run", e.key) for e in chosen]))

    @app.get("/compare.html", response_class=HTMLResponse)
    def compare_document(request: Request):
        chosen = selected(request)
        try:
            compare = optional_module("sparsifyctl.compare", "the compare view")
            records = [r for e in chosen for r in sources.records(e)]
        except NotAvailable as err:
            return message(request, "Not available", str(err), 501)
        except InputError as err:
            return message(request, "Cannot compare", str(err), 400)
        return HTMLResponse(compare.compare_html(records))

    # ---- predict ------------------------------------------------------------------------------
    def predict_models() -> list[str]:
        entries, _ = sources.entries()
        seen: list[str] = []
        for e in entries:
            if e.model and "://" not in e.model and Path(e.model).is_file() and e.model not in seen:
                seen.append(e.model)
        return seen

    predict_fields = ("model", "deploy_device", "deploy_batch_size", "levels", "structures")

    def predict_form(
        request: Request,
        values: dict[str, Any],
        errors: dict[str, str],
        prediction: Any = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        return page(
            request,
            "predict.html",
            values=values,
            errors=errors,
            prediction=prediction,
            assumptions=assumption_groups(prediction.points) if prediction is not None else [],
            models=predict_models(),
            devices=forms.BY_NAME["deploy_device"].choices,
            structure_choices=forms.BY_NAME["structure"].choices,
            status_code=status_code,
        )

    @app.get("/predict", response_class=HTMLResponse)
    def predict_get(request: Request):
        values = {
            "model": request.query_params.get("model", ""),
            "deploy_device": "cpu",
            "deploy_batch_size": "1",
            "levels": PREDICT_LEVELS,
            "structures": ["unstructured", "channels"],
        }
        return predict_form(request, values, {})

    @app.post("/predict", response_class=HTMLResponse)
    async def predict_post(request: Request):
        form = await request.form()
        values: dict[str, Any] = {k: str(form.get(k, "")).strip() for k in predict_fields[:4]}
        values["structures"] = [str(s) for s in form.getlist("structures")]
        errors: dict[str, str] = {}
        if not values["model"]:
            errors["model"] = "the model is missing; give the path of an ONNX file on this machine"
        elif not Path(values["model"]).is_file():
            errors["model"] = (
                f"model '{values['model']}' does not exist on this machine; give an ONNX file path"
            )
        try:
            levels = [float(x) for x in values["levels"].split(",") if x.strip()]
        except ValueError:
            errors["levels"] = (
                f"levels '{values['levels']}' must be numbers separated by commas, e.g. 0.2,0.5"
            )
            levels = []
        try:
            batch = int(values["deploy_batch_size"] or 1)
            deploy = DeployTarget(device=values["deploy_device"] or "cpu", batch_size=batch)
        except ValueError as err:
            errors["deploy_batch_size"] = f"deploy target invalid: {' '.join(str(err).split())[:200]}"
        if errors:
            return predict_form(request, values, errors, status_code=422)
        try:
            predict = optional_module("sparsify_runner.predict", "prediction")
        except NotAvailable as err:
            return predict_form(request, values, {"_form": str(err)}, status_code=501)
        from starlette.concurrency import run_in_threadpool

        try:
            prediction = await run_in_threadpool(
                predict.predict,
                values["model"],
                deploy,
                levels,
                values["structures"],
                seconds=predict_seconds,
            )
        except InputError as err:
            text = str(err)
            where = "levels" if "level" in text else "structures" if "structure" in text else "model"
            return predict_form(request, values, {where: text}, status_code=422)
        return predict_form(request, values, {}, prediction=prediction)

    # ---- new experiment -----------------------------------------------------------------------
    def new_form(
        request: Request,
        result: forms.FormResult | None,
        values: dict[str, str],
        applied: str | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        return page(
            request,
            "new.html",
            fields=forms.FIELDS,
            values=values,
            result=result,
            applied=applied,
            use_cases=forms.USE_CASES,
            status_code=status_code,
            default_namespace=cluster.namespace if cluster else None,
        )

    @app.get("/new", response_class=HTMLResponse)
    def new_get(request: Request):
        values = forms.defaults()
        for name in forms.BY_NAME:
            if name in request.query_params:
                values[name] = request.query_params[name]
        return new_form(request, None, values)

    @app.post("/new", response_class=HTMLResponse)
    async def new_post(request: Request):
        form = await request.form()
        submitted = {k: str(v) for k, v in form.items() if isinstance(v, str)}
        result = forms.build(submitted)
        if result.errors:
            return new_form(request, result, result.values, status_code=422)
        if submitted.get("action") != "apply":
            return new_form(request, result, result.values)
        if cluster is None:
            result.cluster_errors["_form"] = (
                "this dashboard was started without --cluster; nothing to apply to"
            )
            return new_form(request, result, result.values, status_code=409)
        if result.manifest is None:
            return new_form(request, result, result.values, status_code=422)
        applied, field, problem = _apply(cluster, result.manifest)
        if problem:
            result.cluster_errors[field] = problem
            return new_form(request, result, result.values, status_code=409)
        return new_form(request, result, result.values, applied=applied)

    return app


def _clauses(text: str) -> list[str]:
    """A point's assumptions split at its top-level '; ' (not inside parentheses)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == ";" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def assumption_groups(points: list[Any]) -> list[tuple[list[str], str]]:
    """The points' assumptions with each paragraph once per page: a run of two or more
    clauses that several points share word for word (the INT8 paragraph of every INT8 level,
    the channel-pruning model of every pruning level) is one item listing its points; what is
    left of a point is its own item (points whose rest is the same text share it). Items come
    in the order first met, as ``(["0.5 / channels", ...], text)``."""
    clauses = {f"{p.optim_level:g} / {p.structure}": _clauses(p.assumptions) for p in points}
    where: dict[str, list[str]] = {}
    for label, texts in clauses.items():
        for text in dict.fromkeys(texts):
            where.setdefault(text, []).append(label)
    groups: dict[str, list[str]] = {}
    for label, texts in clauses.items():
        runs: list[tuple[tuple[str, ...], list[str]]] = []
        for text in texts:  # consecutive clauses shared by the same points form one run
            key = tuple(where[text])
            if runs and runs[-1][0] == key:
                runs[-1][1].append(text)
            else:
                runs.append((key, [text]))
        own = [text for key, run in runs if not (len(key) > 1 and len(run) > 1) for text in run]
        for key, run in runs:  # in the point's own order; its own clauses as one item
            if len(key) > 1 and len(run) > 1:
                groups.setdefault("; ".join(run), list(key))
            elif own:
                groups.setdefault("; ".join(own), []).append(label)
                own = []
    return [(labels, text) for text, labels in groups.items()]


def _apply(cluster: ClusterTarget, manifest: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """Create the SparsifyExperiment; (key of the new run, field, problem)."""
    meta = manifest["metadata"]
    ns = meta.get("namespace") or cluster.namespace
    meta["namespace"] = ns
    try:
        cluster.kube.create_experiment(ns, manifest)
    except ApiError as err:
        if err.status == 409:
            return (
                None,
                "name",
                (
                    f"an experiment named '{meta['name']}' already exists in namespace '{ns}'; "
                    "choose another --name"
                ),
            )
        return None, "_form", f"the API server refused the experiment: {err.message or err}"
    except OSError as err:
        return None, "_form", f"cannot reach the cluster: {err}"
    return f"k8s/{ns}/{meta['name']}", "", None


def _secure(resp: Response) -> Response:
    resp.headers.setdefault("content-security-policy", CSP)
    resp.headers.setdefault("x-content-type-options", "nosniff")
    resp.headers.setdefault("referrer-policy", "same-origin")  # no-referrer would make Origin "null"
    resp.headers.setdefault("cache-control", "no-store")
    return resp
