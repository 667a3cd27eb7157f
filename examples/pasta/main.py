"""The pasta example: define two workflows and export them to JSON files.

    python main.py                        # writes pasta.json and branched.json here
    caliber workflow show branched.json
    caliber workflow run pasta.json
    python read_results.py                # reads the stored results back

The task functions live in pasta_functions.py, a module of their own: a pinion imports them by
name, so they cannot be defined in this script.
"""

from __future__ import annotations

from pathlib import Path

import pasta_functions as pf

import caliber

HERE = Path(__file__).resolve().parent


def pasta_workflow() -> caliber.Workflow:
    """Make dough, let it rest, roll and shape it: three tasks one after the other."""
    dough = caliber.Task(function=pf.make_dough, name="Make dough", args=[3])
    rest = caliber.Task(function=pf.rest, name="Rest")
    shape = caliber.Task(
        function=pf.roll_and_shape, name="Roll and shape", kwargs={"pasta_type": "tagliatelle"}
    )
    process = caliber.Process(name="Pasta", tasks=[dough, rest, shape])
    return caliber.Workflow(
        name="pasta", process=process, attachments=["pasta_functions.py"],
        description="Fresh tagliatelle from three eggs.",
    )


def branched_workflow() -> caliber.Workflow:
    """Two batches side by side (3 eggs of tagliatelle, 6 eggs of ravioli), then serve both."""
    dough = caliber.Task(function=pf.make_dough, name="Make dough", args=[[3], [6]])
    rest = caliber.Task(function=pf.rest, name="Rest")
    shape = caliber.Task(
        function=pf.roll_and_shape,
        name="Roll and shape",
        kwargs=[{"pasta_type": "tagliatelle"}, {"pasta_type": "ravioli"}],
    )
    batches = caliber.BranchProcess(name="Batches", tasks=[dough, rest, shape], branches=2)
    # Outside its branch process, a branched task's result is the list of its branch values.
    serve = caliber.Task(function=pf.serve, name="Serve", args=[shape.result])
    process = caliber.Process(name="Pasta for a party", tasks=[batches, serve])
    return caliber.Workflow(
        name="pasta-branched", process=process, attachments=["pasta_functions.py"],
        description="Two batches of pasta made side by side.",
    )


def main() -> None:
    for workflow, filename in ((pasta_workflow(), "pasta.json"),
                               (branched_workflow(), "branched.json")):
        path = workflow.export(HERE / filename)
        print(f"exported {workflow.name!r} to {path}")


if __name__ == "__main__":
    main()
