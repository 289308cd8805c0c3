"""SOAP 1.1 envelopes and MTOM/XOP packaging, built by hand with lxml.

Why not zeep: zeep is synchronous (its async transport still runs the WSDL machinery on the event
loop thread and needs httpx), and its MTOM support is partial: it can read XOP responses but does
not build XOP requests (an attachment is sent inline as base64, which Sistema TS accepts only in
principle and which inflates a 5 MB zip by a third). The four TS operations are document/literal
with a handful of fields, so a hand-built envelope is short, exact, and easy to test; aiohttp does
the HTTP.

MTOM (W3C SOAP 1.2 MTOM/XOP, as used with SOAP 1.1 by JAX-WS and CXF): the HTTP body is
`multipart/related; type="application/xop+xml"; start="<root>"; start-info="text/xml"`; the
first part is the envelope (Content-Type `application/xop+xml; type="text/xml"`) in which the
binary element holds `<xop:Include href="cid:..."/>`; the binary follows as its own MIME part,
Content-Transfer-Encoding binary, with that Content-ID.

These functions serve both sides: the client (services.ts_gateway.client) and the simulator.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from urllib.parse import unquote

from lxml import etree

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XOP = "http://www.w3.org/2004/08/xop/include"
SOAP_CONTENT_TYPE = "text/xml; charset=utf-8"
# No DTDs, no entities, no network: these documents come from outside.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=True)


class SoapFormatError(ValueError):
    """A message that is not the SOAP/MTOM we expect; the text says what and where."""


@dataclass(frozen=True)
class SoapFault:
    code: str
    message: str


def envelope(body_element: etree._Element) -> bytes:
    env = etree.Element(etree.QName(SOAP_ENV, "Envelope"), nsmap={"soapenv": SOAP_ENV})
    etree.SubElement(env, etree.QName(SOAP_ENV, "Header"))
    body = etree.SubElement(env, etree.QName(SOAP_ENV, "Body"))
    body.append(body_element)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def fault_envelope(code: str, message: str, detail: etree._Element | None = None) -> bytes:
    env = etree.Element(etree.QName(SOAP_ENV, "Envelope"), nsmap={"soapenv": SOAP_ENV})
    body = etree.SubElement(env, etree.QName(SOAP_ENV, "Body"))
    fault = etree.SubElement(body, etree.QName(SOAP_ENV, "Fault"))
    etree.SubElement(fault, "faultcode").text = f"soapenv:{code}"
    etree.SubElement(fault, "faultstring").text = message
    if detail is not None:
        etree.SubElement(fault, "detail").append(detail)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


def parse_xml(data: bytes, what: str) -> etree._Element:
    try:
        return etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapFormatError(f"{what}: not well-formed XML ({exc})") from exc


def body_payload(data: bytes, what: str) -> etree._Element | SoapFault:
    """The first element inside soap:Body, or the Fault it carries."""
    root = parse_xml(data, what)
    if root.tag != etree.QName(SOAP_ENV, "Envelope").text:
        raise SoapFormatError(f"{what}: root element is {root.tag}, not a SOAP 1.1 Envelope")
    body = root.find(etree.QName(SOAP_ENV, "Body").text)
    if body is None or len(body) == 0:
        raise SoapFormatError(f"{what}: SOAP Body is missing or empty")
    payload = body[0]
    if payload.tag == etree.QName(SOAP_ENV, "Fault").text:
        code = (payload.findtext("faultcode") or "").strip()
        message = (payload.findtext("faultstring") or "").strip()
        detail_message = payload.findtext(".//message")
        return SoapFault(code=code, message=detail_message.strip() if detail_message else message)
    return payload


def child_text(element: etree._Element, name: str, what: str, *, required: bool = True) -> str | None:
    """Text of an unqualified child (the TS schemas have no elementFormDefault: locals are unqualified)."""
    found = element.find(name)
    if found is None:
        if required:
            raise SoapFormatError(f"{what}: element <{name}> is missing")
        return None
    return (found.text or "").strip()


# ---- MTOM / XOP --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MimePart:
    headers: dict[str, str]
    content: bytes

    @property
    def content_id(self) -> str:
        return self.headers.get("content-id", "").strip().strip("<>")


def xop_include(parent: etree._Element, content_id: str) -> None:
    include = etree.SubElement(parent, etree.QName(XOP, "Include"), nsmap={"xop": XOP})
    include.set("href", f"cid:{content_id}")


def build_mtom(envelope_xml: bytes, attachments: dict[str, bytes]) -> tuple[bytes, str]:
    """(body, Content-Type header) of a multipart/related XOP package."""
    boundary = f"uuid:{uuid.uuid4()}"
    while any(boundary.encode() in data for data in (envelope_xml, *attachments.values())):
        boundary = f"uuid:{uuid.uuid4()}"
    root_id = f"root.message.{uuid.uuid4().hex}@ts-gateway"
    crlf = b"\r\n"
    chunks = [
        b"--" + boundary.encode(),
        b'Content-Type: application/xop+xml; charset=UTF-8; type="text/xml"',
        b"Content-Transfer-Encoding: binary",
        b"Content-ID: <" + root_id.encode() + b">",
        b"",
        envelope_xml,
    ]
    for content_id, data in attachments.items():
        chunks += [
            b"--" + boundary.encode(),
            b"Content-Type: application/octet-stream",
            b"Content-Transfer-Encoding: binary",
            b"Content-ID: <" + content_id.encode() + b">",
            b"",
            data,
        ]
    body = crlf.join(chunks) + crlf + b"--" + boundary.encode() + b"--" + crlf
    content_type = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
        f'start="<{root_id}>"; start-info="text/xml"'
    )
    return body, content_type


def _content_type_params(content_type: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in re.finditer(r';\s*([A-Za-z-]+)\s*=\s*("([^"]*)"|[^;\s]+)', content_type):
        params[match.group(1).lower()] = match.group(3) if match.group(3) is not None else match.group(2)
    return params


def parse_multipart(body: bytes, content_type: str, what: str) -> tuple[MimePart, dict[str, MimePart]]:
    """(root part, attachments by Content-ID) of a multipart/related body."""
    params = _content_type_params(content_type)
    boundary = params.get("boundary")
    if not content_type.lower().startswith("multipart/related") or not boundary:
        raise SoapFormatError(
            f"{what}: Content-Type {content_type!r} is not multipart/related with a boundary"
        )
    delimiter = b"--" + boundary.encode()
    sections = body.split(b"\r\n" + delimiter)
    first = sections[0]
    if not first.startswith(delimiter):
        raise SoapFormatError(f"{what}: body does not start with the MIME boundary")
    sections[0] = first[len(delimiter) :]
    parts: list[MimePart] = []
    closed = False
    for section in sections:
        if section.startswith(b"--"):
            closed = True
            break
        head, sep, content = section.partition(b"\r\n\r\n")
        if not sep:
            raise SoapFormatError(f"{what}: MIME part {len(parts) + 1} has no header/body separator")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        parts.append(MimePart(headers=headers, content=content))
    if not closed:
        raise SoapFormatError(f"{what}: multipart body is truncated (no closing boundary)")
    if not parts:
        raise SoapFormatError(f"{what}: multipart body has no parts")
    start = params.get("start", "").strip("<>")
    root = next((part for part in parts if start and part.content_id == start), parts[0])
    attachments = {part.content_id: part for part in parts if part is not root}
    return root, attachments


def resolve_xop(element: etree._Element, attachments: dict[str, MimePart], what: str) -> bytes:
    """Bytes of a base64Binary element sent either as xop:Include or inline base64."""
    include = element.find(etree.QName(XOP, "Include").text)
    if include is None:
        try:
            return base64.b64decode((element.text or "").strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SoapFormatError(f"{what}: <{element.tag}> is neither xop:Include nor base64") from exc
    href = include.get("href", "")
    if not href.startswith("cid:"):
        raise SoapFormatError(f"{what}: xop:Include href {href!r} is not a cid: reference")
    content_id = unquote(href[4:])
    if content_id not in attachments:
        raise SoapFormatError(f"{what}: xop:Include refers to {content_id!r}, which is not attached")
    return attachments[content_id].content
