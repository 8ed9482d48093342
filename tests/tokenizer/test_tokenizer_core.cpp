// The tokenizer core on small hand-made vocabularies: each rule of the three algorithms, special tokens,
// detokenizing and the streaming decoder.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

using tessera::tokenizer::DecodeOptions;
using tessera::tokenizer::ModelKind;
using tessera::tokenizer::StreamingDecoder;
using tessera::tokenizer::Tokenizer;
using tessera::tokenizer::TokenType;
using tessera::tokenizer::Vocabulary;
using Ids = std::vector<int32_t>;

namespace {

// <unk> <s> </s>, the 256 byte tokens (3..258), then `pieces` with the given scores from id 259.
Vocabulary spm_vocab(const std::vector<std::pair<std::string, float>>& pieces) {
  Vocabulary v = Vocabulary::with_defaults(ModelKind::SentencePiece);
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.types = {TokenType::Unknown, TokenType::Control, TokenType::Control};
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(fmt::format("<0x{:02X}>", b));
    v.types.push_back(TokenType::Byte);
  }
  for (const auto& [text, score] : pieces) {
    v.tokens.push_back(text);
    v.types.push_back(TokenType::Normal);
  }
  v.scores.assign(v.tokens.size(), 0.0f);
  for (size_t i = 0; i < pieces.size(); ++i) v.scores[259 + i] = pieces[i].second;
  return v;
}

const std::string kSpace = "\xE2\x96\x81";  // SentencePiece's space
const std::string kG = "\xC4\xA0";            // the byte-level BPE code point of a space

// A byte-level BPE vocabulary with no BOS/EOS (the defaults, 11, are outside these small vocabularies).
Vocabulary bpe_vocab(std::vector<std::string> tokens, std::vector<std::string> merges) {
  Vocabulary v = Vocabulary::with_defaults(ModelKind::BytePairEncoding);
  v.tokens = std::move(tokens);
  v.merges = std::move(merges);
  v.bos_id = v.eos_id = -1;
  v.pre = "gpt-2";
  return v;
}

}  // namespace

TEST(SentencePiece, MergesTheHighestScoringPairFirst) {
  // "abc": "ab" (score -1) beats "bc" (-2), so the result is "ab" + "c", not "a" + "bc".
  Tokenizer tok(spm_vocab({{"a", -5}, {"b", -5}, {"c", -5}, {"ab", -1}, {"bc", -2}, {kSpace, -5}}));
  EXPECT_EQ(tok.encode("abc", false, false), (Ids{264, 262, 261}));  // ▁ ab c
  // With "bc" scoring higher the split flips.
  Tokenizer flipped(spm_vocab({{"a", -5}, {"b", -5}, {"c", -5}, {"ab", -2}, {"bc", -1}, {kSpace, -5}}));
  EXPECT_EQ(flipped.encode("abc", false, false), (Ids{264, 259, 263}));  // ▁ a bc
}

TEST(SentencePiece, TiesGoToTheLeftmostPair) {
  // "aaa": "aa" can merge at 0 or 1 with the same score; the leftmost wins, leaving "aa" + "a".
  auto v = spm_vocab({{"a", -5}, {"aa", -1}});
  v.add_space_prefix = false;
  Tokenizer no_prefix(v);
  EXPECT_EQ(no_prefix.encode("aaa", false, false), (Ids{260, 259}));
}

TEST(SentencePiece, SpacePrefixAndBosFollowTheFlags) {
  const std::vector<std::pair<std::string, float>> pieces = {
      {kSpace + "hi", -1}, {"h", -5}, {"i", -5}, {kSpace, -5}, {kSpace + "h", -2}};
  Tokenizer tok(spm_vocab(pieces));
  EXPECT_EQ(tok.encode("hi", true, false), (Ids{1, 259}));
  EXPECT_EQ(tok.encode("hi", false, false), (Ids{259}));
  EXPECT_EQ(tok.encode("", true, false), (Ids{1}));
  EXPECT_EQ(tok.encode("", false, false), (Ids{}));
  auto v = spm_vocab(pieces);
  v.add_space_prefix = false;
  v.add_eos = true;
  EXPECT_EQ(Tokenizer(v).encode("hi", true, false), (Ids{1, 260, 261, 2}));
}

TEST(SentencePiece, UnknownCharactersFallBackToByteTokens) {
  Tokenizer tok(spm_vocab({{kSpace, -1}}));
  // U+00E9 is C3 A9: byte tokens 3 + 0xC3 and 3 + 0xA9.
  EXPECT_EQ(tok.encode("\xC3\xA9", false, false), (Ids{259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok.decode(tok.encode("\xC3\xA9", false, false)), "\xC3\xA9");
}

TEST(SentencePiece, SpecialTokenTextIsParsedOnlyWhenAsked) {
  Tokenizer tok(spm_vocab({{"<", -5}, {"s", -5}, {">", -5}, {kSpace, -5}, {"x", -5}}));
  Ids plain = tok.encode("<s>x", false, false);
  EXPECT_EQ(plain, (Ids{262, 259, 260, 261, 263}));  // ▁ < s > x
  // Parsed: <s> is the BOS token and the text after a special token gets a space prefix again.
  EXPECT_EQ(tok.encode("<s>x", false, true), (Ids{1, 262, 263}));
}

TEST(SentencePiece, UserDefinedTokensAreAlwaysSplitOff) {
  auto v = spm_vocab({{"<tool>", 0}, {kSpace, -5}, {"a", -5}});
  v.types[259] = TokenType::UserDefined;
  Tokenizer tok(v);
  EXPECT_EQ(tok.encode("a<tool>a", false, false), (Ids{260, 261, 259, 260, 261}));
}

TEST(Decode, RemovesTheSpacePrefixOfTheFirstPieceOnly) {
  Tokenizer tok(spm_vocab({{kSpace + "Once", -1}, {kSpace + "upon", -1}}));
  Ids ids = {1, 259, 260};
  // As llama_detokenize: the BOS piece (printed or not) consumes the one-space strip.
  EXPECT_EQ(tok.decode(ids), " Once upon");
  EXPECT_EQ(tok.decode(ids, {.remove_special = false, .unparse_special = true}), "<s> Once upon");
  EXPECT_EQ(tok.decode(ids, {.remove_special = true, .unparse_special = false}), " Once upon");
  EXPECT_EQ(tok.decode(Ids{259, 260}), "Once upon");
  EXPECT_THROW(tok.decode(Ids{7000}), std::runtime_error);
  EXPECT_THROW(tok.decode(Ids{-1}), std::runtime_error);
}

TEST(Decode, CleansSpacesForBytePairVocabularies) {
  Tokenizer tok(bpe_vocab({"a", kG, ",", "'", "s", kG + "a", kG + ",", kG + "'"}, {kG + " a"}));
  EXPECT_EQ(tok.decode(Ids{0, 6, 5}), "a, a");   // " ," loses its space
  EXPECT_EQ(tok.decode(Ids{0, 7, 4}), "a's");    // " 's" loses its space
  EXPECT_EQ(tok.token_to_piece(6), " ,");        // pieces themselves are raw
}

TEST(BytePair, MergesByRankWithinPreTokens) {
  // Ranks: "l o" first, then "lo w", then "Ġ lo".
  Tokenizer tok(bpe_vocab({"l", "o", "w", kG, "lo", "low", kG + "lo", "!"}, {"l o", "lo w", kG + " lo"}));
  EXPECT_EQ(tok.encode("low", false, false), (Ids{5}));
  // " low" is one pre-token; "Ġ lo" (rank 2) never happens because "lo w" (rank 1) merges first.
  EXPECT_EQ(tok.encode(" low", false, false), (Ids{3, 5}));
  // "low!" splits into the pre-tokens "low" and "!".
  EXPECT_EQ(tok.encode("low!", false, false), (Ids{5, 7}));
  EXPECT_EQ(tok.decode(tok.encode(" low!", false, false)), " low!");
}

TEST(BytePair, UnknownPreTokenizerIsAClearError) {
  Vocabulary v = bpe_vocab({"a"}, {"a a"});
  v.pre = "no-such-pre";
  try {
    Tokenizer tok(v);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "unknown pre-tokenizer type: 'no-such-pre'");
  }
}

TEST(WordPiece, GreedyLongestMatchWithUnknownWords) {
  Vocabulary v = Vocabulary::with_defaults(ModelKind::WordPiece);
  v.tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", kSpace + "play", "ing", kSpace + "!", kSpace + "cafe"};
  v.types = {TokenType::Control, TokenType::Control, TokenType::Control, TokenType::Control,
             TokenType::Normal,  TokenType::Normal,  TokenType::Normal,  TokenType::Normal};
  v.bos_id = 2, v.sep_id = 3, v.unk_id = 1, v.pad_id = 0;
  Tokenizer tok(v);
  // Lower-cased, accents stripped (é -> e), punctuation split off, CLS ... SEP around.
  EXPECT_EQ(tok.encode("Playing CAF\xC3\x89!", true, false), (Ids{2, 4, 5, 7, 6, 3}));
  EXPECT_EQ(tok.encode("xyz", false, false), (Ids{1}));
}

TEST(Vocabulary, InconsistentInputIsRejected) {
  Vocabulary v = spm_vocab({});
  v.scores.pop_back();
  EXPECT_THROW(Tokenizer{v}, std::runtime_error);
  Vocabulary bad_bos = spm_vocab({});
  bad_bos.bos_id = 100000;
  EXPECT_THROW(Tokenizer{bad_bos}, std::runtime_error);
  EXPECT_THROW(Tokenizer{Vocabulary{}}, std::runtime_error);
}

TEST(Special, EndOfGenerationIncludesEosAndEotByText) {
  Vocabulary v = spm_vocab({{"<|eot_id|>", 0}});
  Tokenizer tok(v);
  EXPECT_EQ(tok.eot_id(), 259);
  EXPECT_TRUE(tok.is_end_of_generation(2));
  EXPECT_TRUE(tok.is_end_of_generation(259));
  EXPECT_FALSE(tok.is_end_of_generation(1));
  EXPECT_TRUE(tok.is_control(259));  // llama.cpp turns such a token into a control token
}

TEST(Streaming, NeverEmitsHalfACharacter) {
  Tokenizer tok(spm_vocab({{kSpace + "hi", -1}}));
  StreamingDecoder stream(tok);
  EXPECT_EQ(stream.push(259), " hi");
  // U+1F999 (F0 9F A6 99) arrives one byte token at a time.
  EXPECT_EQ(stream.push(3 + 0xF0), "");
  EXPECT_EQ(stream.push(3 + 0x9F), "");
  EXPECT_EQ(stream.push(3 + 0xA6), "");
  EXPECT_EQ(stream.push(3 + 0x99), "\xF0\x9F\xA6\x99");
  EXPECT_EQ(stream.push(2), "");  // EOS prints nothing
  EXPECT_EQ(stream.push(3 + 0xC3), "");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");  // an unfinished character at the end becomes U+FFFD
  EXPECT_EQ(stream.flush(), "");
}

TEST(Streaming, CompleteUtf8Prefix) {
  using tessera::tokenizer::complete_utf8_prefix;
  EXPECT_EQ(complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(complete_utf8_prefix("a\xE2\x96"), 1u);
  EXPECT_EQ(complete_utf8_prefix("a\xE2\x96\x81"), 4u);
  EXPECT_EQ(complete_utf8_prefix("\x80\x80"), 2u);  // stray continuation bytes cannot complete later
}
