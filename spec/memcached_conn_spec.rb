# frozen_string_literal: true

require_relative "support/fake_memcached"
require_relative "support/quorum_servers"

# The memcached connection layer both memcached stores read their replies
# with (ext/mega_mutex/memcached_conn.c): what it must refuse, and what a
# reply it accepts may never be taken for.
RSpec.describe "memcached replies, as both memcached stores read them" do
  def client_for(address)
    host, port = address.split(":")
    MegaMutex::Native::Client.new([[host, port.to_i]], 500, 500, 1)
  end

  # The longest token a client may use: 200 printable bytes.
  let(:long_token) { "t" * 200 }

  # `client` finds `key` held, by someone other than long_token.
  def expect_held_by_another(client, key, ttl)
    expect(client._acquire(Object.new, key, long_token, ttl, 0, 0.01, 0.01)).to be(false)
    held_by = client._read(key)
    expect(held_by).not_to be_nil
    expect(held_by).not_to eq(long_token)
    expect(held_by).to end_with(" ...")
  end

  describe "a value longer than any token" do
    let(:fake) { FakeMemcached.new.start }
    after { fake.stop }

    it "is never read as the token it starts with (:memcached): no grant" do
      key = key_for("x")
      # The server answers every read of the key with a value that starts
      # with the taker's own 200-byte token and goes on.
      fake.on("gets", if: ->(cmd) { cmd.key == key }) do |cmd|
        value = "#{long_token}-and-more"
        cmd.reply("VALUE #{key} 0 #{value.bytesize} 7\r\n#{value}\r\nEND\r\n")
      end
      client = client_for(fake.address)
      expect_held_by_another(client, key, 5)
    ensure
      client&.close
    end

    it "is a holder, not \"nobody holds it\" (:quorum)" do
      servers = QuorumServers.shared
      MegaMutex.configure { |c| QuorumServers.configure(c, servers) }
      key = key_for("long-#{rand(1 << 30)}")
      value = "#{long_token}-and-more"
      servers.each { |s| expect(s.command("set #{key} 0 60 #{value.bytesize}\r\n#{value}")).to eq("STORED\r\n") }
      addresses = servers.map { |s| s.address.split(":").then { |host, port| [host, port.to_i] } }
      client, = MegaMutex::Native::Client._quorum_open(addresses, 500, 500, QuorumServers::MAX_TTL)
      expect_held_by_another(client, key, QuorumServers::MAX_TTL)
    ensure
      client&.close
      servers&.each { |s| s.delete(key) }
    end
  end

  describe "a reply line with a word too many" do
    let(:fake) { FakeMemcached.new.start }
    after { fake.stop }

    {
      "VALUE with a trailing space" => ->(k) { "VALUE #{k} 0 3 5 \r\nabc\r\nEND\r\n" },
      "VALUE with an empty word" => ->(k) { "VALUE #{k} 0  3 5\r\nabc\r\nEND\r\n" },
      "END with a trailing space" => ->(_) { "END \r\n" }
    }.each do |what, reply|
      it "#{what}: ServerError, and the next call works" do
        key = key_for("x")
        fake.on("gets", times: 1) { |cmd| cmd.reply(reply.call(cmd.key)) }
        client = client_for(fake.address)
        expect { client._read(key) }.to raise_error(MegaMutex::ServerError, /#{fake.port}.*(malformed|unexpected)/i)
        fake.put(key, "tok-a")
        expect(client._read(key)).to eq("tok-a")
      ensure
        client&.close
      end
    end
  end
end
