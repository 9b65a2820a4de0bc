"""Sign-in and sign-out."""

from __future__ import annotations

from flask import current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from service import db
from service.dashboard.blueprint import bp
from service.dashboard.session_auth import (
    current_marketer,
    end_session,
    safe_next,
    start_session,
)
from service.dashboard.sign_in_limits import SignInLimits
from service.marketers import sign_in as check_credentials
from service.ratelimit import retry_after_header


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response | tuple[str, int] | tuple[str, int, dict[str, str]] | str:
    target = safe_next(request.values.get("next"), url_for("dashboard.experiments"))
    if request.method == "GET":
        if current_marketer() is not None:
            return redirect(target)
        return render_template("sign_in.html", next=target, email="")
    email = request.form.get("email", "")
    limits: SignInLimits = current_app.extensions["copybandit.sign_in_limits"]
    wait = limits.wait(email=email, address=request.remote_addr)
    if wait > 0:
        seconds = retry_after_header(wait)
        unit = "second" if seconds == "1" else "seconds"
        error = f"Too many wrong passwords. Try again in {seconds} {unit}."
        page = render_template("sign_in.html", next=target, email=email, error=error)
        return page, 429, {"Retry-After": seconds}
    marketer = check_credentials(
        session=db.session(), email=email, password=request.form.get("password", "")
    )
    if marketer is None or not start_session(marketer):
        limits.failed(email=email, address=request.remote_addr)
        return (
            render_template(
                "sign_in.html", next=target, email=email, error="Wrong email or password."
            ),
            401,
        )
    return redirect(target, code=303)


@bp.post("/sign-out")
def sign_out() -> Response:
    end_session()
    return redirect(url_for("dashboard.sign_in"), code=303)
