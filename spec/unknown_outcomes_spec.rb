# frozen_string_literal: true

require "timeout"
require_relative "support/fake_memcached"
require_relative "support/fault_proxy"

# Requests whose outcome the holder cannot know - a release the server
# refused, a take cut short after its add went out - leave nothing held for
# the rest of a lease: the renewer's clean-up removes the lock as soon as the
# server accepts it (issue: no lock granted twice, point 7, and the take that
# an interrupt ends mid-request).
RSpec.describe "requests with an unknown outcome" do
  describe "a release refused by the server (a full -M memcached)" do
    let(:fake) { FakeMemcached.new.start }

    before { MegaMutex.configure { |c| c.memcache_servers = [fake.address] } }
    after { fake.stop }

    it "raises after the block, saying the block ran, and the lock is removed once the server accepts it" do
      key = nil
      ran = false
      error = nil
      begin
        MegaMutex.with_distributed_mutex("refused") do |lock|
          key = lock.key
          fake.on("cas", times: 1) { |cmd| cmd.reply("SERVER_ERROR out of memory storing object\r\n") }
          ran = true
        end
      rescue MegaMutex::ServerError => e
        error = e
      end
      expect(ran).to be(true)
      expect(error&.message).to match(/out of memory storing object/).and match(/after the block ran to completion/)
      # The lease is 32 s; the clean-up removes it as soon as a release is accepted.
      wait_for(within: 5, message: "the refused release to be retried") { fake.value(key).nil? }
      expect(MegaMutex::Lock.holds).to be_empty
    end
  end

  describe "a take cut short by an interrupt after its add was sent" do
    let(:proxy) { FaultProxy.new(memcached.port).start }

    before { MegaMutex.configure { |c| c.memcache_servers = [proxy.address] } }
    after { proxy.stop }

    it "leaves no lock behind once the server answers again" do
      proxy.inject("gets", :stall, times: 1) # the add lands, its read-back never comes
      lock = MegaMutex::Lock.new("stalled")
      expect { Timeout.timeout(0.2) { lock.lock } }.to raise_error(Timeout::Error)
      expect(lock).not_to be_owned
      proxy.clear
      # The add landed with a 32 s lease; the clean-up removes it.
      wait_for(within: 5, message: "the stalled take's lock to be removed") { memcached.get(lock.key).nil? }
    end
  end
end
