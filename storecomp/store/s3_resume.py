"""Resumable multipart uploads to S3 (boto3): what the copy engine keeps after a kill -9.

obstore (the S3 client of :class:`~storecomp.store.s3.S3Store`) does not
expose its multipart upload ids, so a put it was making when its process died
can never be finished. :meth:`S3Store.resumable_upload` goes through boto3
(already the ``s3`` extra's client for upload hygiene) instead:

* **Tagged.** Every upload started here gets a small *marker* object beside
  its key, ``<dir>/.sc-upload/<name>/<digest of the upload id>``, holding the
  upload id and a caller's *tag* (the copy engine: the object's size, part
  size and crc32c list). S3 keeps no per-upload metadata that a listing
  returns (SeaweedFS neither), so the marker is what says "this upload is
  for these bytes"; an upload without one (anyone else's) is never adopted.
* **Adopted.** Before a new upload starts, the key's markers are listed
  (newest first); the first whose tag matches and whose upload still exists
  is adopted: ``list_parts`` gives the parts already there, and each part
  whose size is the one expected for its number (and has an ETag) is kept.
  Only the other parts are uploaded, then the upload is completed. The
  caller reads the object back and checks every byte (a kept part with
  wrong bytes is found there, and the caller uploads afresh).
* **Leased.** The marker is rewritten when an upload is adopted and at least
  every :data:`RENEW_S` seconds while parts go up: its age is the age of the
  upload's last activity, which :meth:`S3Store.sweep_uploads` (and
  ``storecomp gc``) use instead of the upload's start, so a resumed upload
  begun long ago is not aborted while a live run owns it.
* **Unsigned payloads.** Parts go with SigV4's ``UNSIGNED-PAYLOAD`` (botocore
  ``payload_signing_enabled=False``, which botocore honours over plain HTTP
  too) and without botocore's own request checksum: the caller's crc32c
  read-back is the body's check, as for :meth:`S3Store.put_stream_checked`.
* **Concurrent runs** may adopt the same upload: both upload the missing parts
  (the same bytes), one completes; the other's upload or complete then finds
  the upload gone (``NoSuchUpload``/``InvalidPart``), which this module
  reports as "gone" (False / None), never as success: the caller checks what
  is at the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import InvalidArgumentError, NotFoundError, StorecompError
from .base import ObjectInfo
from .keys import RESERVED_PREFIX

if TYPE_CHECKING:
    from .s3 import S3Store

#: S3's smallest part (all but the last); SeaweedFS enforces it too (EntityTooSmall).
MIN_PART_BYTES = 5 << 20
#: Seconds between rewrites of an owned upload's marker (its lease) while parts go up.
RENEW_S = 60.0
MARKER_FORMAT = "storecomp.upload/1"
_GONE_CODES = ("NoSuchUpload", "InvalidPart")


def marker_dir(full_key: str) -> str:
    """The bucket-level prefix of the markers of ``full_key``'s uploads (the same from any store prefix)."""
    head, _, name = full_key.rpartition("/")
    return f"{head + '/' if head else ''}{RESERVED_PREFIX}upload/{name}/"


def marker_key(full_key: str, upload_id: str) -> str:
    """The bucket-level key of the marker of upload ``upload_id`` of ``full_key``."""
    return marker_dir(full_key) + hashlib.sha256(upload_id.encode()).hexdigest()[:32]


def _code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class ResumableUpload:
    """One multipart upload of ``key`` (``size`` bytes in parts of ``part_bytes``,
    the last shorter), new or adopted from an earlier run. Part indices are
    0-based (S3 part number = index + 1). ``kept`` maps the indices already
    uploaded (by an earlier run) to their ETags; upload the others with
    :meth:`upload_part`, then :meth:`complete`. Made by :meth:`S3Store.resumable_upload`."""

    def __init__(
        self, store: S3Store, client: Any, key: str, size: int, part_bytes: int, tag: str, upload_id: str, kept: dict[int, str]
    ) -> None:
        self.store, self.client, self.key = store, client, key
        self.size, self.part_bytes, self.tag, self.upload_id = size, part_bytes, tag, upload_id
        self.kept = dict(kept)
        self.adopted = bool(kept)
        self.full_key = store._full_key(key)
        self._etags = dict(kept)
        self._lock = threading.Lock()
        self._renewed = time.monotonic()

    @property
    def parts(self) -> int:
        """Parts in all (at least 1)."""
        return max(1, -(-self.size // self.part_bytes))

    def part_size(self, index: int) -> int:
        """Bytes of part ``index``."""
        return min(self.part_bytes, self.size - index * self.part_bytes)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the parts kept from an earlier run."""
        return sum(self.part_size(i) for i in self.kept)

    def upload_part(self, index: int, data: Any) -> bool:
        """Upload part ``index`` (``part_size(index)`` bytes, any buffer). False when the
        upload is gone (completed by another run, or aborted): stop and check the key."""
        body = bytes(memoryview(data).cast("B"))
        if len(body) != self.part_size(index):
            raise InvalidArgumentError(
                f"{self.store.name_of(self.key)}: part {index} is {len(body)} bytes, {self.part_size(index)} expected"
            )
        res = self._call(
            lambda: self.client.upload_part(
                Bucket=self.store.bucket, Key=self.full_key, UploadId=self.upload_id, PartNumber=index + 1, Body=body
            ),
            "upload part",
        )
        if res is None:
            self._drop_marker()
            return False
        with self._lock:
            self._etags[index] = str(res["ETag"])
            renew = time.monotonic() - self._renewed >= RENEW_S
            if renew:
                self._renewed = time.monotonic()
        if renew:
            self.store._write_upload_marker(self.client, self.key, self.upload_id, self.size, self.part_bytes, self.tag)
        return True

    def complete(self) -> ObjectInfo | None:
        """Publish the object from its parts; None when the upload is gone (another
        run completed it, or it was aborted): check what is at the key."""
        missing = [i for i in range(self.parts) if i not in self._etags]
        if missing:
            raise InvalidArgumentError(f"{self.store.name_of(self.key)}: parts {missing[:5]} were never uploaded")
        parts = [{"PartNumber": i + 1, "ETag": self._etags[i]} for i in range(self.parts)]
        self.store._forget(self.key)
        res = self._call(
            lambda: self.client.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.full_key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}
            ),
            "complete upload",
        )
        self._drop_marker()
        if res is None:
            return None
        return ObjectInfo(self.key, self.size, str(res.get("ETag") or ""), None)

    def abort(self) -> None:
        """Abort the upload (its parts are freed) and drop its marker; an upload gone already is fine."""
        self.store._abort_upload(self.key, self.upload_id)

    def _drop_marker(self) -> None:
        try:
            self.store._delete_upload_marker(self.client, self.key, self.upload_id)
        except StorecompError:
            pass  # a marker whose upload is gone is dropped by the next lookup of this key

    def _call(self, fn: Any, op: str) -> Any:
        """``fn()``; None when S3 says the upload is gone, other errors translated."""
        try:
            return fn()
        except Exception as e:
            if _code(e) in _GONE_CODES:
                return None
            raise self.store._translate_boto(e, self.key, op) from None


def open_upload(store: S3Store, key: str, size: int, part_bytes: int, tag: str, adopt: bool = True) -> ResumableUpload:
    """The newest unfinished upload of ``key`` tagged ``tag`` for ``size`` bytes in
    ``part_bytes`` parts (``adopt``), its fitting parts kept; else a new tagged one."""
    client = store._copy_client()
    full = store._full_key(key)
    if adopt:
        for upload_id in _tagged_uploads(store, client, key, full, size, part_bytes, tag):
            kept = _fitting_parts(store, client, key, full, upload_id, size, part_bytes)
            if kept is None:  # gone meanwhile: its marker is stale
                _drop(store, client, key, upload_id)
                continue
            store._write_upload_marker(client, key, upload_id, size, part_bytes, tag)  # renew the lease: a live run owns it
            return ResumableUpload(store, client, key, size, part_bytes, tag, upload_id, kept)
    res = store._admin_call(lambda: client.create_multipart_upload(Bucket=store.bucket, Key=full), key, "start upload")
    upload_id = str(res["UploadId"])
    store._write_upload_marker(client, key, upload_id, size, part_bytes, tag)
    return ResumableUpload(store, client, key, size, part_bytes, tag, upload_id, {})


def marker_body(full_key: str, upload_id: str, size: int, part_bytes: int, tag: str) -> bytes:
    doc = {
        "format": MARKER_FORMAT,
        "key": full_key,
        "upload_id": upload_id,
        "size": size,
        "part_bytes": part_bytes,
        "tag": tag,
        "holder": f"{socket.gethostname()}:{os.getpid()}",
    }
    return json.dumps(doc, sort_keys=True).encode()


def _tagged_uploads(store: S3Store, client: Any, key: str, full: str, size: int, part_bytes: int, tag: str) -> list[str]:
    """Upload ids of ``key`` whose markers carry this tag, newest marker first."""
    page = store._admin_call(
        lambda: client.list_objects_v2(Bucket=store.bucket, Prefix=marker_dir(full), MaxKeys=100), key, "list uploads"
    )
    markers = sorted(page.get("Contents", []), key=lambda o: o["LastModified"], reverse=True)
    out = []
    for m in markers:
        try:
            raw = store._admin_call(lambda m=m: client.get_object(Bucket=store.bucket, Key=m["Key"])["Body"].read(), key, "read")
            doc = json.loads(raw)
        except NotFoundError:
            continue
        except ValueError:
            continue  # not a marker of ours
        if (
            isinstance(doc, dict)
            and doc.get("format") == MARKER_FORMAT
            and doc.get("key") == full
            and (doc.get("tag"), doc.get("size"), doc.get("part_bytes")) == (tag, size, part_bytes)
            and str(m["Key"]) == marker_key(full, str(doc.get("upload_id")))
        ):
            out.append(str(doc["upload_id"]))
    return out


def _fitting_parts(
    store: S3Store, client: Any, key: str, full: str, upload_id: str, size: int, part_bytes: int
) -> dict[int, str] | None:
    """{index: ETag} of the upload's parts of the expected size (the newest per number); None when it is gone."""
    count = max(1, -(-size // part_bytes))
    found: dict[int, tuple[Any, str]] = {}
    kwargs: dict[str, Any] = {"Bucket": store.bucket, "Key": full, "UploadId": upload_id}
    while True:
        try:
            page = client.list_parts(**kwargs)
        except Exception as e:
            if _code(e) in _GONE_CODES:
                return None
            raise store._translate_boto(e, key, "list parts") from None
        for p in page.get("Parts", []):
            i = int(p["PartNumber"]) - 1
            etag = str(p.get("ETag") or "").strip()
            expected = min(part_bytes, size - i * part_bytes) if 0 <= i < count else -1
            if int(p.get("Size", -1)) != expected or etag in ("", '""'):
                continue  # a part of another size (or none): uploaded again
            modified = p.get("LastModified")
            if i not in found or (modified is not None and found[i][0] is not None and modified >= found[i][0]):
                found[i] = (modified, etag)  # a part number uploaded twice: the last upload counts, as in S3
        if not page.get("IsTruncated"):
            break
        kwargs["PartNumberMarker"] = page.get("NextPartNumberMarker", 0)
    return {i: etag for i, (_, etag) in found.items()}


def _drop(store: S3Store, client: Any, key: str, upload_id: str) -> None:
    try:
        store._delete_upload_marker(client, key, upload_id)
    except StorecompError:
        pass
