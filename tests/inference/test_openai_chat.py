"""`/v1/chat/completions` on the tiny model through the official `openai` client: a streamed reply is
the same text as the unstreamed one (and arrives in several chunks), `n` choices come from seeds
`seed + i`, and bad values get a 400 naming the field."""

import asyncio

import openai

from tests.inference.test_server_client import serving

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_streaming_and_n_choices_with_the_official_client(fresh_core):
    async def main():
        async with serving(fresh_core) as (_, urls, _):
            client = openai.AsyncOpenAI(base_url=urls[0] + "/v1", api_key="none", max_retries=0)
            try:
                kw = {"model": "tiny", "messages": MESSAGES, "max_tokens": 24, "temperature": 1.0, "seed": 11}
                whole = await client.chat.completions.create(**kw)
                chunks = [c async for c in await client.chat.completions.create(
                    **kw, stream=True, stream_options={"include_usage": True})]
                two = await client.chat.completions.create(**{**kw, "seed": 10}, n=2)
                try:
                    await client.chat.completions.create(**kw, n=0)
                except openai.BadRequestError as e:
                    bad_n = e.message
                return whole, chunks, two, bad_n
            finally:
                await client.close()

    whole, chunks, two, bad_n = asyncio.run(main())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content and len(pieces) >= 2
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[1].message.content == whole.choices[0].message.content  # choice 1 samples with seed 10 + 1
    assert two.usage.completion_tokens >= whole.usage.completion_tokens
    assert "n" in bad_n
