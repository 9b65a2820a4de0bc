"""Sign-in and sign-out."""

from __future__ import annotations

from flask import redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from service import db
from service.dashboard.blueprint import bp
from service.dashboard.session_auth import (
    current_marketer,
    end_session,
    safe_next,
    start_session,
)
from service.marketers import sign_in as check_credentials


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Response | tuple[str, int] | str:
    target = safe_next(request.values.get("next"), url_for("dashboard.experiments"))
    if request.method == "GET":
        if current_marketer() is not None:
            return redirect(target)
        return render_template("sign_in.html", next=target, email="")
    email = request.form.get("email", "")
    marketer = check_credentials(
        session=db.session(), email=email, password=request.form.get("password", "")
    )
    if marketer is None:
        return (
            render_template(
                "sign_in.html", next=target, email=email, error="Wrong email or password."
            ),
            401,
        )
    start_session(marketer)
    return redirect(target, code=303)


@bp.post("/sign-out")
def sign_out() -> Response:
    end_session()
    return redirect(url_for("dashboard.sign_in"), code=303)
