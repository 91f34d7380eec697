"""The inbox rules, as pure functions: file names, completeness and waiting times in, submissions out."""

import pytest

from nst_batch.daemon.inbox import Entry, SidecarRefs, Submission, plan

TIMEOUT = 600.0


def entry(path: str, complete: bool = True, waited: float = 1.0) -> Entry:
    return Entry(path, complete, waited)


def planned(*entries: Entry, sidecars: dict[str, SidecarRefs] | None = None, library=()) -> list[Submission]:
    return plan(entries, sidecars or {}, library, TIMEOUT)


def only(submissions: list[Submission]) -> Submission:
    assert len(submissions) == 1, submissions
    return submissions[0]


# ---- pairs ----


def test_a_pair_is_ready_only_when_both_files_are_complete() -> None:
    assert planned(entry("cat.content.jpg"), entry("cat.style.png", complete=False)) == []
    assert planned(entry("cat.content.jpg", complete=False), entry("cat.style.png")) == []
    pair = only(planned(entry("cat.content.jpg"), entry("cat.style.png")))
    assert (pair.name, pair.kind, pair.problem) == ("cat", "pair", None)
    assert pair.contents == ("cat.content.jpg",) and pair.styles == ("cat.style.png",)
    assert set(pair.files) == {"cat.content.jpg", "cat.style.png"} and pair.sidecar is None


def test_a_pair_takes_its_sidecar_and_waits_for_it_to_be_complete() -> None:
    files = (entry("cat.content.jpg"), entry("cat.style.jpg"))
    assert planned(*files, entry("cat.yaml", complete=False)) == []
    pair = only(planned(*files, entry("cat.yaml"), sidecars={"cat.yaml": SidecarRefs()}))
    assert pair.sidecar == "cat.yaml" and "cat.yaml" in pair.files and pair.problem is None


def test_pairs_are_told_apart_by_stem_and_suffixes_are_case_insensitive() -> None:
    submissions = planned(
        entry("a.content.JPG"), entry("a.style.png"), entry("b.content.jpeg"), entry("b.style.webp")
    )
    assert [(s.name, s.problem) for s in submissions] == [("a", None), ("b", None)]


def test_a_half_pair_waits_then_is_refused_after_pair_timeout_with_a_reason() -> None:
    assert planned(entry("cat.content.jpg", waited=TIMEOUT - 1)) == []
    refused = only(planned(entry("cat.content.jpg", waited=TIMEOUT)))
    assert refused.files == ("cat.content.jpg",)
    assert "cat.style" in refused.problem and "never arrived" in refused.problem and "600" in refused.problem


def test_a_complete_half_whose_partner_is_still_being_written_is_not_refused_as_a_leftover() -> None:
    slow_copy = planned(entry("cat.content.jpg", waited=TIMEOUT * 2), entry("cat.style.jpg", complete=False, waited=TIMEOUT))
    assert slow_copy == []
    assert only(planned(entry("cat.content.jpg", waited=TIMEOUT * 2), entry("cat.style.jpg"))).problem is None


def test_two_content_images_for_one_stem_are_refused_at_once() -> None:
    refused = only(planned(entry("cat.content.jpg"), entry("cat.content.png"), entry("cat.style.jpg")))
    assert set(refused.files) == {"cat.content.jpg", "cat.content.png", "cat.style.jpg"}
    assert "2 content images" in refused.problem and "keep one" in refused.problem


# ---- folders ----


def test_a_folder_blends_its_style_images_and_runs_each_content() -> None:
    names = ("dogs/style1.jpg", "dogs/style2.png", "dogs/a.jpg", "dogs/b.jpg", "dogs/job.yaml")
    folder = only(planned(*(entry(n) for n in names)))
    assert (folder.name, folder.kind, folder.problem) == ("dogs", "folder", None)
    assert folder.styles == ("dogs/style1.jpg", "dogs/style2.png")
    assert folder.contents == ("dogs/a.jpg", "dogs/b.jpg")
    assert folder.sidecar == "dogs/job.yaml" and set(folder.files) == set(names)


def test_a_folder_waits_for_all_of_its_files() -> None:
    assert planned(entry("dogs/style.jpg"), entry("dogs/a.jpg", complete=False)) == []


def test_a_folder_without_a_style_waits_then_is_refused() -> None:
    assert planned(entry("dogs/a.jpg", waited=10), entry("dogs/b.jpg", waited=10)) == []
    refused = only(planned(entry("dogs/a.jpg", waited=TIMEOUT), entry("dogs/b.jpg")))
    assert refused.kind == "folder" and set(refused.files) == {"dogs/a.jpg", "dogs/b.jpg"}
    assert "no a style image" in refused.problem


def test_a_folder_with_a_subfolder_is_refused_whole_once_complete() -> None:
    names = ("trip/style.jpg", "trip/a.jpg", "trip/raw/")
    assert planned(entry("trip/style.jpg"), entry("trip/a.jpg"), entry("trip/raw/", complete=False)) == []
    refused = only(planned(*(entry(n) for n in names)))
    assert refused.kind == "folder" and set(refused.files) == set(names)
    assert "trip/raw/" in refused.problem and "move them up into trip/" in refused.problem


def test_an_empty_folder_waits_then_is_refused() -> None:
    assert planned(entry("empty/", waited=TIMEOUT - 1)) == []
    refused = only(planned(entry("empty/", waited=TIMEOUT)))
    assert (refused.name, refused.kind, refused.files) == ("empty", "folder", ("empty/",))
    assert "empty" in refused.problem and "style.EXT" in refused.problem


# ---- standalone sidecars ----


def test_a_standalone_sidecar_names_inbox_files_and_a_library_style() -> None:
    refs = {"night.yaml": SidecarRefs(content=("me.jpg", "you.jpg"), style=("starry.jpg", "local.png"))}
    files = (entry("night.yaml"), entry("me.jpg"), entry("you.jpg"), entry("local.png"))
    job = only(planned(*files, sidecars=refs, library=["starry.jpg"]))
    assert (job.name, job.kind, job.problem, job.sidecar) == ("night", "sidecar", None, "night.yaml")
    assert job.contents == ("me.jpg", "you.jpg")
    assert job.styles == ("styles/starry.jpg", "local.png")
    assert set(job.files) == {"night.yaml", "me.jpg", "you.jpg", "local.png"}  # the library is never claimed


def test_a_standalone_sidecar_waits_for_the_files_it_names_then_gives_up() -> None:
    refs = {"night.yaml": SidecarRefs(content=("me.jpg",), style=("starry.jpg",))}
    assert planned(entry("night.yaml"), entry("me.jpg", complete=False), sidecars=refs, library=["starry.jpg"]) == []
    assert planned(entry("night.yaml", waited=5), sidecars=refs, library=["starry.jpg"]) == []
    refused = only(planned(entry("night.yaml", waited=TIMEOUT), sidecars=refs, library=["starry.jpg"]))
    assert refused.files == ("night.yaml",) and "me.jpg never arrived" in refused.problem


@pytest.mark.parametrize("ref", ["../../etc/passwd", "/etc/passwd", "sub/me.jpg", "..\\me.jpg", "..", ".hidden.jpg"])
def test_a_standalone_sidecar_naming_a_path_is_refused_and_never_resolved(ref: str) -> None:
    refs = {"evil.yaml": SidecarRefs(content=(ref,), style=("starry.jpg",))}
    refused = only(planned(entry("evil.yaml"), sidecars=refs, library=["starry.jpg", "passwd"]))
    assert refused.files == ("evil.yaml",)  # nothing but the sidecar itself is claimed
    assert refused.contents == () and repr(ref) in refused.problem and "not a file name" in refused.problem


def test_a_standalone_sidecar_without_a_style_is_refused_with_what_to_add() -> None:
    refs = {"half.yaml": SidecarRefs(content=("me.jpg",))}
    refused = only(planned(entry("half.yaml"), entry("me.jpg"), sidecars=refs))
    assert "names no style" in refused.problem and "style: FILE" in refused.problem


def test_two_sidecars_naming_one_file_the_first_wins_and_the_second_is_refused_at_once() -> None:
    refs = {
        "a.yaml": SidecarRefs(content=("me.jpg",), style=("starry.jpg",)),
        "b.yaml": SidecarRefs(content=("me.jpg", "you.jpg"), style=("starry.jpg",)),
    }
    files = (entry("a.yaml"), entry("b.yaml"), entry("me.jpg"), entry("you.jpg"))
    first, second = planned(*files, sidecars=refs, library=["starry.jpg"])
    assert (first.sidecar, first.problem, set(first.files)) == ("a.yaml", None, {"a.yaml", "me.jpg"})
    assert second.sidecar == "b.yaml" and set(second.files) == {"b.yaml", "you.jpg"}
    assert "me.jpg is already used by a.yaml" in second.problem


def test_a_sidecar_naming_half_of_a_pair_takes_it_and_the_other_half_is_refused_at_once() -> None:
    refs = {"x.yaml": SidecarRefs(content=("cat.content.jpg",), style=("starry.jpg",))}
    files = (entry("x.yaml"), entry("cat.content.jpg"), entry("cat.style.jpg"))
    job, half = planned(*files, sidecars=refs, library=["starry.jpg"])
    assert set(job.files) == {"x.yaml", "cat.content.jpg"} and job.problem is None
    assert half.files == ("cat.style.jpg",)
    assert "no partner" in half.problem and "cat.content.jpg is used by x.yaml" in half.problem


def test_a_waiting_sidecar_keeps_the_files_it_names_from_a_pair() -> None:
    refs = {"x.yaml": SidecarRefs(content=("cat.content.jpg", "later.jpg"), style=("starry.jpg",))}
    files = (entry("x.yaml"), entry("cat.content.jpg"), entry("cat.style.jpg"))
    half = only(planned(*files, sidecars=refs, library=["starry.jpg"]))  # x.yaml waits for later.jpg
    assert half.files == ("cat.style.jpg",) and "cat.content.jpg is used by x.yaml" in half.problem


def test_a_sidecar_refused_for_its_content_still_waits_for_its_files_to_be_complete() -> None:
    refs = {"half.yaml": SidecarRefs(content=("me.jpg",))}
    assert planned(entry("half.yaml"), entry("me.jpg", complete=False), sidecars=refs) == []


@pytest.mark.parametrize(
    "names",
    [
        ("a.yaml", "b.yaml", "c.yaml", "me.jpg", "cat.content.jpg", "cat.style.jpg"),
        ("b.yaml", "c.yaml", "cat.content.jpg", "cat.style.jpg", "cat.yaml"),
    ],
)
def test_no_two_submissions_of_one_plan_share_a_file(names) -> None:
    refs = {
        "a.yaml": SidecarRefs(content=("me.jpg",), style=("cat.style.jpg",)),
        "b.yaml": SidecarRefs(content=("cat.content.jpg", "me.jpg"), style=("starry.jpg",)),
        "c.yaml": SidecarRefs(content=("c.yaml",), style=("cat.content.jpg",)),
        "cat.yaml": SidecarRefs(),
    }
    submissions = plan([entry(n, waited=TIMEOUT) for n in names], refs, ["starry.jpg"], TIMEOUT)
    owned = [f for s in submissions for f in s.files]
    assert sorted(owned) == sorted(names)


# ---- what is ignored or refused ----


@pytest.mark.parametrize(
    "name", [".DS_Store", ".cat.content.jpg", "cat.content.jpg.part", "cat.style.jpg.tmp", "cat.yaml~", "x.crdownload"]
)
def test_hidden_partial_and_backup_files_are_ignored(name: str) -> None:
    assert planned(entry(name, waited=TIMEOUT * 10)) == []
    pair = only(planned(entry("cat.content.jpg"), entry("cat.style.jpg"), entry(name, waited=TIMEOUT)))
    assert name not in pair.files


def test_files_in_a_hidden_folder_are_ignored() -> None:
    assert planned(entry(".sync/style.jpg", waited=TIMEOUT), entry(".sync/a.jpg", waited=TIMEOUT)) == []


def test_an_unknown_extension_is_refused_once_complete() -> None:
    assert planned(entry("notes.txt", complete=False)) == []
    refused = only(planned(entry("notes.txt", waited=0)))
    assert (refused.kind, refused.files) == ("refused", ("notes.txt",))
    assert "not a file nst-batch reads" in refused.problem and ".png" in refused.problem


def test_a_leftover_plain_image_is_refused_after_pair_timeout() -> None:
    assert planned(entry("holiday.jpg", waited=TIMEOUT - 1)) == []
    refused = only(planned(entry("holiday.jpg", waited=TIMEOUT)))
    assert (refused.name, refused.kind) == ("holiday", "refused")
    assert "belongs to no job" in refused.problem and "NAME.content.EXT" in refused.problem


def test_a_sidecar_that_names_nothing_and_has_no_pair_is_refused_after_pair_timeout() -> None:
    refs = {"lonely.yaml": SidecarRefs()}
    assert planned(entry("lonely.yaml"), sidecars=refs) == []
    refused = only(planned(entry("lonely.yaml", waited=TIMEOUT), sidecars=refs))
    assert "belongs to no job" in refused.problem


def test_an_unreadable_sidecar_alone_is_refused_with_why_it_could_not_be_read() -> None:
    problem = "night.yaml: line 2: mapping values are not allowed here"
    refs = {"night.yaml": SidecarRefs(problem=problem)}
    assert planned(entry("night.yaml"), sidecars=refs) == []  # its images may still come
    assert only(planned(entry("night.yaml", waited=TIMEOUT), sidecars=refs)).problem == problem


def test_every_file_ends_in_exactly_one_submission() -> None:
    names = [
        "a.content.jpg", "a.style.jpg", "a.yaml", "b.content.jpg", "notes.txt", "stray.png",
        "night.yaml", "me.jpg", "dogs/style.jpg", "dogs/x.jpg", "trip/style.jpg", "trip/a.jpg", "trip/raw/",
        "empty/",
    ]
    refs = {"a.yaml": SidecarRefs(), "night.yaml": SidecarRefs(content=("me.jpg",), style=("starry.jpg",))}
    submissions = plan([entry(n, waited=TIMEOUT) for n in names], refs, ["starry.jpg"], TIMEOUT)
    owned = [f for s in submissions for f in s.files]
    assert sorted(owned) == sorted(names)


# ---- a copy that stopped half way, and names no one means ----


def stalled(path: str, unchanged: float) -> Entry:
    """A file still open for writing (the watcher saw it written, never closed)."""
    return Entry(path, complete=False, waited=unchanged + 5, unchanged=unchanged, writing=True)


def test_a_copy_that_stopped_half_way_never_starts_and_its_job_is_refused_after_pair_timeout() -> None:
    style = entry("cat.style.png", waited=TIMEOUT * 2)
    assert planned(stalled("cat.content.png", TIMEOUT - 1), style) == []
    refused = only(planned(stalled("cat.content.png", TIMEOUT), style))
    assert refused.kind == "pair" and set(refused.files) == {"cat.content.png", "cat.style.png"}
    assert "cat.content.png has been open for writing and unchanged for 600 s" in refused.problem
    assert "copy it again" in refused.problem
    # In a folder, the whole folder goes; a file still growing is not stalled, however long it takes.
    folder = only(planned(entry("trip/style.png"), stalled("trip/a.png", TIMEOUT)))
    assert folder.kind == "folder" and "trip/a.png has been open for writing" in folder.problem
    growing = Entry("trip/a.png", complete=False, waited=TIMEOUT * 3, unchanged=1.0, writing=True)
    assert planned(entry("trip/style.png"), growing) == []


@pytest.mark.parametrize("bad", ["new\nline", "tab\there", "bell\a", "undecodable\udcff", "sep\u2028arator"])
def test_a_name_with_control_characters_or_undecodable_bytes_is_refused_at_once(bad) -> None:
    pair = planned(entry(f"{bad}.content.png"), entry(f"{bad}.style.png"))
    assert len(pair) == 2 and all(s.kind == "refused" for s in pair)
    for submission in pair:
        assert "rename it" in submission.problem and repr(submission.files[0]) in submission.problem
        assert submission.name.isprintable()  # the failed/ folder's name and the log lines
    folder = only(planned(entry("trip/style.png"), entry(f"trip/{bad}.png")))
    assert folder.kind == "folder" and repr(f"trip/{bad}.png") in folder.problem
    refs = {"night.yaml": SidecarRefs(content=(f"{bad}.png",), style=("s.png",))}
    by_kind = {s.kind: s for s in planned(entry(f"{bad}.png"), entry("night.yaml"), sidecars=refs, library=["s.png"])}
    assert "is not a file name in the inbox" in by_kind["sidecar"].problem
    assert by_kind["refused"].files == (f"{bad}.png",)


def test_spaces_and_unicode_are_ordinary_names() -> None:
    for name in ("my cat", "café ☕", "日本"):
        pair = only(planned(entry(f"{name}.content.png"), entry(f"{name}.style.png")))
        assert (pair.name, pair.kind, pair.problem) == (name, "pair", None)
