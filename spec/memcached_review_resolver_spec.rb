# frozen_string_literal: true

require_relative "support/fake_memcached"
require_relative "support/memcached_review_proxy"
require_relative "support/memcached_review_resolver"

# Server names are resolved once per connection entry and the addresses
# reused by every reconnect (memcached_conn.c, mmc_addresses): no DNS round
# trip per reconnect, no getaddrinfo in flight for a forked child to
# inherit. A server that moved is found again: a connect that fails on the
# cached addresses looks the name up once more, within the same
# connect_timeout. The resolutions are counted by a getaddrinfo wrapper
# preloaded into a child process (spec/support/memcached_review_resolver.rb).
RSpec.describe "memcached server names resolved once" do
  host = MemcachedReviewResolver::HOST

  around do |example|
    Dir.mktmpdir("mm_resolver") do |dir|
      @resolver = MemcachedReviewResolver.new(dir)
      example.run
    end
  end

  let(:resolver) { @resolver }
  let(:fake) { FakeMemcached.new.start }
  after { fake.stop }

  # The server closes the connection after every reply to a gets of "k":
  # each such read then needs a new connection.
  def close_after_every_gets
    fake.on("gets", if: ->(cmd) { cmd.key == "k" }) do |cmd|
      cmd.reply(cmd.default_reply)
      cmd.close
    end
  end

  it "a client resolves its server's name once, however often it reconnects" do
    close_after_every_gets
    resolver.point_at("127.0.0.1")
    fake.put("k", "someone")
    script = <<~RUBY
      c = MegaMutex::Native::Client.new([[#{host.inspect}, #{fake.port}]], 1000, 1000, 1)
      reads = Array.new(10) { c._read("k") }
      state = Object.new
      taken = c._acquire(state, "k2", "tok", 5, 0, 0.01, 0.01)
      released = c._release("k2", "tok", state.instance_variable_get(:@version))
      step([reads, taken, released])
    RUBY
    resolver.run_ruby(script) do |talk|
      expect(talk.call).to eq([["someone"] * 10, true, true])
    end
    expect(fake.count("gets")).to be >= 11 # each on a connection of its own
    expect(resolver.resolutions).to eq(1)
  end

  it "a server that moved to another address is found again within the call, and that address is kept" do
    close_after_every_gets
    fake.put("k", "someone")
    second = MemcachedReviewProxy.new(fake.port, host: "127.0.0.2", port: fake.port) # its other address
    resolver.point_at("127.0.0.2")
    script = <<~RUBY
      c = MegaMutex::Native::Client.new([[#{host.inspect}, #{fake.port}]], 1000, 1000, 1)
      step(c._read("k"))
      step(Array.new(5) { c._read("k") })
    RUBY
    resolver.run_ruby(script) do |talk|
      expect(talk.call).to eq("someone") # through 127.0.0.2
      expect(resolver.resolutions).to eq(1)
      second.stop # 127.0.0.2 refuses connections from now on
      resolver.point_at("127.0.0.1")
      expect(talk.call).to eq(["someone"] * 5) # the first of them re-resolved
    end
    expect(resolver.resolutions).to eq(2)
  ensure
    second&.stop
  end

  it "a name that does not resolve is a ConnectionError naming the server, and is looked up again later" do
    script = <<~RUBY
      c = MegaMutex::Native::Client.new([[#{host.inspect}, #{fake.port}]], 1000, 1000, 0)
      err = begin; c._read("k"); rescue MegaMutex::ConnectionError => e; e.message; end
      step(err)
      step(c._read("k"))
    RUBY
    fake.put("k", "someone")
    resolver.run_ruby(script) do |talk|
      expect(talk.call).to match(/#{Regexp.escape(host)}:#{fake.port}.*could not resolve host/)
      resolver.point_at("127.0.0.1")
      expect(talk.call).to eq("someone")
    end
    expect(resolver.resolutions).to eq(2)
  end

  it "a name that stops resolving (the name server away) keeps its server reachable at the addresses it had" do
    fake.put("k", "someone")
    resolver.point_at("127.0.0.1")
    script = <<~RUBY
      c = MegaMutex::Native::Client.new([[#{host.inspect}, #{fake.port}]], 1000, 1000, 0)
      step(c._read("k"))
      err = begin; c._read("k"); rescue MegaMutex::ConnectionError => e; e.message; end
      step(err)
      step(c._read("k"))
    RUBY
    resolver.run_ruby(script) do |talk|
      expect(talk.call).to eq("someone")
      resolver.point_at("")
      # The connection, and a new one, closed before answering: the
      # addresses are stale, to be looked up again.
      fake.on("gets", times: 2, &:close)
      expect(talk.call).to match(/closed the connection/)
      expect(talk.call).to eq("someone") # looked up (in vain), then the old addresses
    end
    expect(resolver.resolutions).to eq(2)
  end
end
