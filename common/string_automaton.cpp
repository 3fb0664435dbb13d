// String formats and patterns as deterministic automata (string_automaton.h).
#include "common/string_automaton.h"

#include <algorithm>
#include <bitset>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <utility>

namespace llava {
namespace {

using Chars = std::bitset<128>;

// What a JSON string holds unescaped, in ASCII: space to DEL but '"' and '\'.
Chars writable() {
  Chars c;
  for (int i = 0x20; i < 0x80; ++i) c.set(static_cast<size_t>(i));
  c.reset('"');
  c.reset('\\');
  return c;
}

Chars of(std::string_view chars) {
  Chars c;
  for (const char ch : chars) c.set(static_cast<unsigned char>(ch));
  return c;
}

// The one character of `c` (0 where it has another count).
char only(const Chars& c) {
  if (c.count() != 1) return 0;
  size_t i = 0;
  while (!c.test(i)) ++i;
  return static_cast<char>(i);
}

// Builds a format's automaton state by state.
struct Builder {
  StringAutomaton a;

  int state() { return a.add_state(); }
  void edge(int from, std::string_view chars, int to) {
    for (const char c : chars)
      a.next[static_cast<size_t>(from)][static_cast<size_t>(c)] = static_cast<int16_t>(to);
  }
  int one(int from, std::string_view chars) {  // one of `chars`
    const int to = state();
    edge(from, chars, to);
    return to;
  }
  int run(int from, std::string_view chars, int count) {  // `count` of `chars`
    for (int i = 0; i < count; ++i) from = one(from, chars);
    return from;
  }
  // Two characters: one of pairs[i].first (the firsts apart), then one of pairs[i].second,
  // ending in `to` (a new state where -1).
  int two(int from, std::initializer_list<std::pair<std::string_view, std::string_view>> pairs,
          int to = -1) {
    if (to < 0) to = state();
    for (const auto& [first, second] : pairs) edge(one(from, first), second, to);
    return to;
  }
};

constexpr std::string_view kDigits = "0123456789", kHex = "0123456789abcdefABCDEF";

// RFC 3339 full-date: YYYY-MM-DD, month 01-12, day 01-31.
int full_date(Builder& b, int from) {
  int at = b.run(from, kDigits, 4);
  at = b.one(at, "-");
  at = b.two(at, {{"0", "123456789"}, {"1", "012"}});
  at = b.one(at, "-");
  return b.two(at, {{"0", "123456789"}, {"12", kDigits}, {"3", "01"}});
}

// RFC 3339 full-time: HH:MM:SS (seconds up to 60), a fraction, then Z or +HH:MM / -HH:MM.
int full_time(Builder& b, int from) {
  const std::initializer_list<std::pair<std::string_view, std::string_view>> hours = {
      {"01", kDigits}, {"2", "0123"}};
  const std::initializer_list<std::pair<std::string_view, std::string_view>> sixty = {
      {"012345", kDigits}};
  int at = b.two(from, hours);
  at = b.one(at, ":");
  at = b.two(at, sixty);
  at = b.one(at, ":");
  const int seconds = b.two(at, {{"012345", kDigits}, {"6", "0"}});  // 60: a leap second
  const int fraction = b.one(b.one(seconds, "."), kDigits);
  b.edge(fraction, kDigits, fraction);
  const int end = b.state();
  const int sign = b.state();
  for (const int before : {seconds, fraction}) {
    b.edge(before, "Z", end);
    b.edge(before, "+-", sign);
  }
  b.two(b.one(b.two(sign, hours), ":"), sixty, end);
  return end;
}

// Dotted-quad IPv4: four decimal octets 0-255, no leading zero; the last octet's states are
// the ends.
void ipv4(Builder& b, int at) {
  for (int octet = 0; octet < 4; ++octet) {
    const int one = b.one(at, "1"), two = b.one(at, "2"), other = b.one(at, "3456789");
    const int zero = b.one(at, "0"), three = b.state();  // octets that take no more digits
    const int one_more = b.one(one, kDigits);            // 1x: one more digit may come
    b.edge(one_more, kDigits, three);
    const int two_low = b.one(two, "01234"), two_five = b.one(two, "5");
    b.edge(two, "6789", three);
    b.edge(two_low, kDigits, three);
    b.edge(two_five, "012345", three);
    b.edge(other, kDigits, three);
    const int whole[] = {zero, one, one_more, two, two_low, two_five, other, three};
    if (octet == 3) {
      for (const int end : whole) b.a.accept[static_cast<size_t>(end)] = true;
      return;
    }
    at = b.state();
    for (const int end : whole) b.edge(end, ".", at);
  }
}

std::shared_ptr<const StringAutomaton> build_format(std::string_view format) {
  Builder b;
  int at = b.state();
  if (format == "ipv4") {
    ipv4(b, at);
    return std::make_shared<const StringAutomaton>(std::move(b.a));
  }
  if (format == "uuid") {
    for (const int group : {8, 4, 4, 4, 12})
      at = b.run(group == 8 ? at : b.one(at, "-"), kHex, group);
  } else {
    if (format == "date" || format == "date-time") at = full_date(b, at);
    if (format == "date-time") at = b.one(at, "T");
    if (format == "time" || format == "date-time") at = full_time(b, at);
  }
  b.a.accept[static_cast<size_t>(at)] = true;
  return std::make_shared<const StringAutomaton>(std::move(b.a));
}

// A pattern's syntax tree.
struct Regex {
  enum class Kind { kChars, kConcat, kAlt, kRepeat } kind = Kind::kConcat;
  Chars chars;
  std::vector<Regex> parts;  // kConcat, kAlt; kRepeat: its one part
  int min = 0, max = -1;     // kRepeat; max -1: no bound
};

constexpr int kMaxCount = 1000;

Regex node(Regex::Kind kind) {
  Regex r;
  r.kind = kind;
  return r;
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  // The top level: alternatives, each anchored at its start by '^' and its end by '$' or not
  // (a pattern matches anywhere: what is not anchored may have any text beside it).
  Regex top() {
    Regex any_text{
        Regex::Kind::kRepeat, {}, {Regex{Regex::Kind::kChars, writable(), {}, 0, -1}}, 0, -1};
    Regex alt = node(Regex::Kind::kAlt);
    do {
      const bool start = take('^');
      Regex branch = concat();
      const bool end = take('$');
      if (!at_end() && peek() == ')') fail("a ')' without its '('");
      if (!at_end() && peek() != '|')
        fail("'^' and '$' are supported only at the ends of a top-level alternative");
      Regex whole = node(Regex::Kind::kConcat);
      if (!start) whole.parts.push_back(any_text);
      whole.parts.push_back(std::move(branch));
      if (!end) whole.parts.push_back(any_text);
      alt.parts.push_back(std::move(whole));
    } while (take('|'));
    if (!at_end()) fail("unexpected '" + std::string(1, peek()) + "'");
    return alt;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw PatternError(what + " (at character " + std::to_string(pos_) + ")");
  }
  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }
  bool take(char c) {
    if (at_end() || peek() != c) return false;
    ++pos_;
    return true;
  }
  char next() {
    if (at_end()) fail("the pattern ends early");
    return text_[pos_++];
  }

  Regex alternatives() {
    Regex alt = node(Regex::Kind::kAlt);
    do alt.parts.push_back(concat());
    while (take('|'));
    return alt;
  }

  Regex concat() {
    Regex seq = node(Regex::Kind::kConcat);
    // (a '$' before the end or a '|' ends a top-level alternative)
    while (!at_end() && peek() != '|' && peek() != ')' &&
           !(peek() == '$' && (pos_ + 1 == text_.size() || text_[pos_ + 1] == '|'))) {
      seq.parts.push_back(repeat());
    }
    return seq;
  }

  Regex repeat() {
    Regex atom = this->atom();
    int min = -2, max = -1;
    if (take('*')) {
      min = 0;
    } else if (take('+')) {
      min = 1;
    } else if (take('?')) {
      min = 0, max = 1;
    } else if (take('{')) {
      min = number();
      max = min;
      if (take(',')) max = at_end() || peek() == '}' ? -1 : number();
      if (!take('}')) fail("a count's '}' is missing");
      if (max >= 0 && max < min) fail("a count's maximum is below its minimum");
    }
    if (min == -2) return atom;
    take('?');  // lazy: the same strings
    if (!at_end() && (peek() == '*' || peek() == '+' || peek() == '{'))
      fail("a quantifier after a quantifier");
    return Regex{Regex::Kind::kRepeat, {}, {std::move(atom)}, min, max};
  }

  int number() {
    int n = 0, digits = 0;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      n = std::min(n * 10 + (next() - '0'), kMaxCount + 1);
      ++digits;
    }
    if (digits == 0) fail("a count without digits");
    if (n > kMaxCount) fail("a count above " + std::to_string(kMaxCount));
    return n;
  }

  Regex atom() {
    const char c = next();
    if (c == '(') {
      if (take('?')) {
        if (!take(':')) fail("lookaround and named groups are not supported");
      }
      if (++depth_ > kMaxDepth)
        fail("groups nested more than " + std::to_string(kMaxDepth) + " deep");
      Regex inner = alternatives();
      if (!take(')')) fail("a group's ')' is missing");
      --depth_;
      return inner;
    }
    if (c == '[') return chars(klass());
    if (c == '.') return chars(writable() & ~of("\n\r"));
    if (c == '\\') return chars(escape(false));
    if (c == '^' || c == '$')
      fail("'^' and '$' are supported only at the ends of a top-level alternative");
    if (c == ')' || c == '*' || c == '+' || c == '?' || c == '{' || c == '}' || c == ']' ||
        c == '|')
      fail("'" + std::string(1, c) + "' where a character or group should be");
    if (static_cast<unsigned char>(c) >= 0x80) fail("only ASCII characters are supported");
    return chars(of(std::string_view(&c, 1)));
  }

  static Regex chars(const Chars& c) { return Regex{Regex::Kind::kChars, c, {}, 0, -1}; }

  // After '\': the characters it stands for (`in_class`: inside [...]).
  Chars escape(bool in_class) {
    const char c = next();
    const Chars digits = of(kDigits),
                word = of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"),
                space = of(" \t\n\r\f\v");
    Chars all;
    all.set();
    switch (c) {
      case 'd':
        return digits;
      case 'D':
        return all & ~digits;
      case 'w':
        return word;
      case 'W':
        return all & ~word;
      case 's':
        return space;
      case 'S':
        return all & ~space;
      case 't':
        return of("\t");
      case 'n':
        return of("\n");
      case 'r':
        return of("\r");
      case 'f':
        return of("\f");
      case 'v':
        return of("\v");
      case 'x':
      case 'u': {
        int value = 0;
        for (int i = 0; i < (c == 'x' ? 2 : 4); ++i) {
          const char h = next();
          const size_t digit =
              std::string_view("0123456789abcdef").find(static_cast<char>(h | 0x20));
          if (digit == std::string_view::npos) fail("a hex digit should come here");
          value = value * 16 + static_cast<int>(digit);
        }
        if (value >= 0x80) fail("only ASCII characters are supported");
        Chars one;
        one.set(static_cast<size_t>(value));
        return one;
      }
      default:
        break;
    }
    if (c == 'b' && in_class) return of("\b");
    if (std::string_view("\\/.-^$*+?()[]{}|").find(c) != std::string_view::npos)
      return of(std::string_view(&c, 1));
    fail(std::string("'\\") + c + "' is not supported");
  }

  // After '[': a class's characters, up to its ']'.
  Chars klass() {
    const bool negated = take('^');
    Chars set;
    bool first = true;
    while (true) {
      if (at_end()) fail("a class's ']' is missing");
      if (peek() == ']' && !first) break;
      first = false;
      Chars low;
      char low_char = 0;
      const char c = next();
      if (c == '\\') {
        low = escape(true);
        low_char = only(low);
      } else {
        if (static_cast<unsigned char>(c) >= 0x80) fail("only ASCII characters are supported");
        low = of(std::string_view(&c, 1));
        low_char = c;
      }
      if (!at_end() && peek() == '-' && pos_ + 1 < text_.size() && text_[pos_ + 1] != ']') {
        ++pos_;
        char high = next();
        if (high == '\\') {
          const Chars h = escape(true);
          if (h.count() != 1) fail("a range must end at one character");
          high = only(h);
        } else if (static_cast<unsigned char>(high) >= 0x80) {
          fail("only ASCII characters are supported");
        }
        if (low.count() != 1 || high < low_char) fail("a range out of order");
        for (int i = low_char; i <= high; ++i) set.set(static_cast<size_t>(i));
      } else {
        set |= low;
      }
    }
    ++pos_;  // ']'
    if (negated) set.flip();
    return set;
  }

  static constexpr int kMaxDepth = 32;
  std::string_view text_;
  size_t pos_ = 0;
  int depth_ = 0;  // groups open
};

// Thompson's construction: states with edges on characters and empty edges.
class Nfa {
 public:
  static constexpr size_t kMaxStates = 4096;
  struct Edge {
    uint64_t low = 0, high = 0;  // its characters: bit c of low (c < 64) or high (c - 64)
    int to = 0;
  };
  struct State {
    std::vector<Edge> edges;
    std::vector<int> empty;
  };

  int add() {
    if (states_.size() >= kMaxStates) throw PatternError("the pattern is too large to follow");
    states_.emplace_back();
    return static_cast<int>(states_.size()) - 1;
  }
  // Adds r after `from`; returns the state where it ends.
  int build(const Regex& r, int from) {
    switch (r.kind) {
      case Regex::Kind::kChars: {
        const int to = add();
        const Chars chars = r.chars & writable();
        Edge edge;
        for (size_t c = 0; c < 128; ++c) {
          if (chars.test(c)) (c < 64 ? edge.low : edge.high) |= uint64_t{1} << (c % 64);
        }
        edge.to = to;
        states_[static_cast<size_t>(from)].edges.push_back(edge);
        return to;
      }
      case Regex::Kind::kConcat:
        for (const Regex& part : r.parts) from = build(part, from);
        return from;
      case Regex::Kind::kAlt: {
        const int to = add();
        for (const Regex& part : r.parts) {
          const int start = add();
          states_[static_cast<size_t>(from)].empty.push_back(start);
          states_[static_cast<size_t>(build(part, start))].empty.push_back(to);
        }
        return to;
      }
      case Regex::Kind::kRepeat: {
        const Regex& body = r.parts[0];
        for (int i = 0; i < r.min; ++i) from = build(body, from);
        if (r.max < 0) {  // a loop
          const int head = add();
          states_[static_cast<size_t>(from)].empty.push_back(head);
          states_[static_cast<size_t>(build(body, head))].empty.push_back(head);
          return head;
        }
        const int out = add();
        states_[static_cast<size_t>(from)].empty.push_back(out);
        for (int i = r.min; i < r.max; ++i) {
          from = build(body, from);
          states_[static_cast<size_t>(from)].empty.push_back(out);
        }
        return out;
      }
    }
    return from;
  }
  const State& state(int i) const { return states_[static_cast<size_t>(i)]; }

 private:
  std::vector<State> states_;
};

// The NFA states `from` reaches by empty edges, itself included; sorted.
std::vector<int> closure(const Nfa& nfa, std::vector<int> from) {
  std::vector<int> out, stack = std::move(from);
  std::vector<bool> seen;
  while (!stack.empty()) {
    const int s = stack.back();
    stack.pop_back();
    if (static_cast<size_t>(s) >= seen.size()) seen.resize(static_cast<size_t>(s) + 1, false);
    if (seen[static_cast<size_t>(s)]) continue;
    seen[static_cast<size_t>(s)] = true;
    out.push_back(s);
    for (const int t : nfa.state(s).empty) stack.push_back(t);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::shared_ptr<const StringAutomaton> format_automaton(std::string_view format) {
  static const std::map<std::string, std::shared_ptr<const StringAutomaton>, std::less<>> kFormats =
      [] {
        std::map<std::string, std::shared_ptr<const StringAutomaton>, std::less<>> formats;
        for (const char* name : {"date", "time", "date-time", "uuid", "ipv4"})
          formats[name] = build_format(name);
        return formats;
      }();
  const auto found = kFormats.find(format);
  return found == kFormats.end() ? nullptr : found->second;
}

std::shared_ptr<const StringAutomaton> pattern_automaton(std::string_view pattern) {
  Nfa nfa;
  const int start = nfa.add();
  const int end = nfa.build(Parser(pattern).top(), start);
  // Subset construction over the writable characters.
  StringAutomaton a;
  std::map<std::vector<int>, int> known;
  std::vector<std::vector<int>> sets;
  auto state_of = [&](std::vector<int> set) {
    const auto found = known.find(set);
    if (found != known.end()) return found->second;
    if (sets.size() >= StringAutomaton::kMaxStates) {
      throw PatternError("the pattern needs more than " +
                         std::to_string(StringAutomaton::kMaxStates) + " states to follow");
    }
    const int id = a.add_state();
    known.emplace(set, id);
    a.accept[static_cast<size_t>(id)] = std::binary_search(set.begin(), set.end(), end);
    sets.push_back(std::move(set));
    return id;
  };
  state_of(closure(nfa, {start}));
  for (size_t i = 0; i < sets.size(); ++i) {
    // Each character's NFA targets (an edge's characters walked bit by bit), then one DFA
    // state for each different set of them.
    std::array<std::vector<int>, 128> to;
    for (const int s : sets[i]) {
      for (const Nfa::Edge& edge : nfa.state(s).edges) {
        for (int half = 0; half < 2; ++half) {
          for (uint64_t bits = half ? edge.high : edge.low; bits != 0; bits &= bits - 1) {
            to[static_cast<size_t>(64 * half + __builtin_ctzll(bits))].push_back(edge.to);
          }
        }
      }
    }
    std::map<std::vector<int>, int> seen;
    size_t last = 128;  // the last character with targets (as gathered, before sorting)
    std::vector<int> last_gathered;
    for (size_t c = 0; c < 128; ++c) {
      if (to[c].empty()) continue;
      if (last < 128 && to[c] == last_gathered) {  // a class's characters: the same edges
        a.next[i][c] = a.next[i][last];
        continue;
      }
      last = c;
      last_gathered = to[c];
      std::sort(to[c].begin(), to[c].end());
      to[c].erase(std::unique(to[c].begin(), to[c].end()), to[c].end());
      auto found = seen.find(to[c]);
      if (found == seen.end()) found = seen.emplace(to[c], state_of(closure(nfa, to[c]))).first;
      a.next[i][c] = static_cast<int16_t>(found->second);
    }
  }
  // Only states that can still end: edges into the others go.
  std::vector<bool> live(a.accept.begin(), a.accept.end());
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t i = 0; i < a.next.size(); ++i) {
      if (live[i]) continue;
      for (const int16_t t : a.next[i]) {
        if (t >= 0 && live[static_cast<size_t>(t)]) {
          live[i] = changed = true;
          break;
        }
      }
    }
  }
  if (!live[0])
    throw PatternError("no string it matches can be written without escapes (in ASCII)");
  for (auto& row : a.next) {
    for (int16_t& t : row) {
      if (t >= 0 && !live[static_cast<size_t>(t)]) t = -1;
    }
  }
  return std::make_shared<const StringAutomaton>(std::move(a));
}

}  // namespace llava
