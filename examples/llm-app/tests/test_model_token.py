"""Heavy only because the llm_client fixture builds a LocalLLMClient."""


def test_client_reply(llm_client):
    assert llm_client.reply("The capital of France is", max_tokens=4)


def test_client_reply_again(llm_client):
    assert llm_client.reply("Name a colour.", max_tokens=4)
