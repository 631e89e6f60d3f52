"""Assembles the simulator: entity store, blob storage, job runner, and the HTTP application.

`Simulator` owns the parts; `Simulator.app()` builds the FastAPI application serving them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, fields
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from d365sim import __version__, auth, dmf, odata
from d365sim.blob import BlobStore
from d365sim.config import Faults, SimConfig
from d365sim.faults import CallCounters, middleware
from d365sim.jobs import JobRunner
from d365sim.projects import ProjectRegistry, load_projects_file
from d365sim.seed import generate
from d365sim.store import EntityStore

SETTINGS = ("job_seconds", "row_ms", "sas_seconds", "token_seconds", "page_size", "default_company")


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        if not config.blob_connection_string:
            raise ValueError("a blob connection string is required (d365sim serve starts Azurite)")
        self.config = config
        path = config.data_dir / "entities.sqlite" if config.data_dir else None
        self.store = EntityStore(path)
        self.blobs = BlobStore(config.blob_connection_string, config.blob_container)
        self.blobs.ensure_container()
        extra = load_projects_file(config.projects_file) if config.projects_file else []
        self.projects = ProjectRegistry(extra)
        self.runner = JobRunner(config, self.store, self.blobs, self.projects)
        self.issuer = auth.TokenIssuer(config)
        self.counters = CallCounters()

    def seed(self, products: int, onhand_rows: int | None = None, seed: int = 0) -> dict[str, int]:
        """Replace all entity data with the deterministic seed for `products` products."""
        self.store.reset()
        written: dict[str, int] = {}
        # Even with no products, companies, warehouses and customer groups exist.
        for entity, rows in generate(products, seed=seed, onhand_rows=onhand_rows):
            written[entity.name] = self.store.insert_many(entity, rows)
        return written

    def reset(self) -> None:
        self.runner.reset()
        self.projects.reset()
        self.counters.reset()

    def close(self) -> None:
        self.runner.stop()
        self.store.close()

    def app(self, on_ready: Callable[[], None] | None = None) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            self.runner.start()
            if on_ready is not None:
                on_ready()
            try:
                yield
            finally:
                self.runner.stop()

        application = FastAPI(
            title="d365sim",
            version=__version__,
            docs_url="/_sim/docs",
            openapi_url="/_sim/openapi.json",
            redoc_url=None,
            lifespan=lifespan,
        )
        application.middleware("http")(middleware(self.issuer, self.config.faults, self.counters))
        application.include_router(auth.router(self.config, self.issuer))
        application.include_router(self.admin_router())
        application.include_router(dmf.router(self.config, self.runner))
        application.include_router(odata.router(self.config, self.store))
        return application

    def admin_router(self) -> Any:
        from fastapi import APIRouter

        api = APIRouter(prefix="/_sim", tags=["simulator admin"])
        config = self.config

        @api.get("")
        @api.get("/")
        async def overview() -> dict[str, Any]:
            return {
                "version": __version__,
                "baseUrl": config.resource,
                "tenant": config.tenant,
                "clientId": config.client_id,
                "settings": {name: getattr(config, name) for name in SETTINGS},
                "faults": asdict(config.faults),
                "entities": self.store.counts(),
                "projects": [p.name for p in self.projects.all()],
            }

        @api.post("/reset")
        async def reset(request: Request) -> dict[str, Any]:
            body = await _json(request)
            self.reset()
            products = int(body.get("products", config.seed_products))
            onhand = body.get("onhandRows", config.seed_onhand_rows)
            written = self.seed(products, int(onhand) if onhand else None, int(body.get("seed", 0)))
            return {"reset": True, "entities": written}

        @api.post("/seed")
        async def seed(request: Request) -> dict[str, Any]:
            body = await _json(request)
            onhand = body.get("onhandRows")
            written = self.seed(
                int(body.get("products", config.seed_products)),
                int(onhand) if onhand else None,
                int(body.get("seed", 0)),
            )
            return {"entities": written}

        @api.get("/faults")
        async def get_faults() -> dict[str, Any]:
            return asdict(config.faults)

        @api.put("/faults")
        async def put_faults(request: Request) -> dict[str, Any]:
            body = await _json(request)
            known = {f.name: f.type for f in fields(Faults)}
            for name, value in body.items():
                if name not in known:
                    raise HTTPException(400, f"unknown fault '{name}'; known: {sorted(known)}")
                current = getattr(config.faults, name)
                setattr(config.faults, name, type(current)(value))
            return asdict(config.faults)

        @api.get("/settings")
        async def get_settings() -> dict[str, Any]:
            return {name: getattr(config, name) for name in SETTINGS}

        @api.put("/settings")
        async def put_settings(request: Request) -> dict[str, Any]:
            body = await _json(request)
            for name, value in body.items():
                if name not in SETTINGS:
                    raise HTTPException(400, f"unknown setting '{name}'; known: {list(SETTINGS)}")
                typed = type(getattr(config, name))(value)
                if name != "default_company" and typed < (1 if name == "page_size" else 0):
                    raise HTTPException(400, f"setting '{name}' must be positive")
                setattr(config, name, typed)
            return {name: getattr(config, name) for name in SETTINGS}

        @api.get("/jobs")
        async def jobs() -> list[dict[str, Any]]:
            return [e.summary() for e in self.runner.all()]

        @api.get("/jobs/{execution_id}")
        async def job(execution_id: str) -> dict[str, Any]:
            execution = self.runner.get(execution_id)
            if execution is None:
                raise HTTPException(404, f"no execution '{execution_id}'")
            detail = execution.summary()
            detail["errors"] = [
                {"entity": r.label, "row": e.row_number, "keys": e.keys, "message": e.message}
                for r in execution.results
                for e in r.errors
            ]
            return detail

        @api.get("/stats")
        async def stats() -> dict[str, Any]:
            """Job statistics: imports, overlaps per legal entity, statuses."""
            return self.runner.stats.as_dict(self.runner.all())

        @api.get("/counters")
        async def counters() -> dict[str, int]:
            return self.counters.snapshot()

        @api.delete("/counters")
        async def reset_counters() -> dict[str, int]:
            self.counters.reset()
            return self.counters.snapshot()

        @api.get("/entities")
        async def entities() -> dict[str, int]:
            return self.store.counts()

        return api


async def _json(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}
    body = await request.json()
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body
